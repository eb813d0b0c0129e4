"""The client-facing HTTP API."""
