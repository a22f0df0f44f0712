"""Tag catalog and evaluation (arrives with issue 4)."""
