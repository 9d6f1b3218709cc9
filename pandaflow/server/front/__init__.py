"""The REST front: the API blueprint, the read queries it (and the CLI) share, and the
OpenAPI document generated from the request and response structs."""
