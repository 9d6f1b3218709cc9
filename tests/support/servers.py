"""A job server inside the test process: the REST API and the ZeroMQ dispatcher as threads, on
free ports (``port=0``), its database a given URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pandaflow.server.app import Server, ServerConfig


def local_server(db_url: str, token: str, *, start: bool = True, **config: Any) -> Server:
    """A :class:`~pandaflow.server.app.Server` on ``db_url`` with ``token`` and any other
    :class:`~pandaflow.server.app.ServerConfig` fields, started unless ``start=False``; the caller
    stops it."""
    server = Server(ServerConfig(db_url=db_url, port=0, zmq_port=0, token=token, **config))
    if start:
        server.start()
    return server


@contextmanager
def serving(db_url: str, token: str, **config: Any) -> Iterator[Server]:
    """A started :func:`local_server`, stopped when the block ends."""
    server = local_server(db_url, token, **config)
    try:
        yield server
    finally:
        server.stop()
