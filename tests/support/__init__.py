"""Test support: service discovery, an in-thread API server, Kafka read-back."""
