"""`eedi serve`: a trained run as a labelling page and a JSON API, with a SQLite label store (docs/serve.md)."""
