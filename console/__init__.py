"""The web console: Customer 360, segment builder, tag catalog and ops, served by the API."""
