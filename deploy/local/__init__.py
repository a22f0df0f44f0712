"""The local real stack: Kafka (KRaft, from Maven Central), Redis (Debian), chDB."""
