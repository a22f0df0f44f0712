"""HTTP ingest: Segment-compatible tracking API and the native events API."""
