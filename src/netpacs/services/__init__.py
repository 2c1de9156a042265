"""Services: the use cases (ingest, query, retrieve, ...) that every adapter calls."""
