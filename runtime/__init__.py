"""Plumbing every stage shares: the Kafka publisher, the error policy, undecodable messages,
topic readback, tokens. Capability rooms import it; it imports only contracts."""
