"""Identity resolution: identifier normalisation now; rules and the processor next."""
