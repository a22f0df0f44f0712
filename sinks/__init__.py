"""History sinks into ClickHouse (arrives with the stream core, issue 3)."""
