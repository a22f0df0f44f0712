"""Contracts: the models every stage speaks. No I/O lives here."""
