"""The database: the schema, engines and migrations, and the hot path's plain SQL."""
