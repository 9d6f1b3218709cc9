"""Wire format of the ZeroMQ hot path, shared by the server, pilots and executors.

Every message is one ZeroMQ frame holding a msgpack map. Maps carry plain data only
(str, int, float, bool, None, bytes, lists, maps): function and result payloads travel as
opaque ``bytes`` that the server stores and forwards but never deserializes, so no peer can
make the server unpickle anything.

Each map from a peer to the server carries ``"tok"`` (the shared token) and ``"op"``.

Executor -> server
    ``submit``   {"client", "batch", "workflow", "jobs": [job, ...]}  -> ``submitted``
    ``sync``     {"client", "uids": [...]}  -> ``synced`` {"unknown": [...]} plus ``results``
    ``ping``     {"client"} -> ``pong`` {"epoch"}
Server -> executor
    ``results``  {"results": [{"uid", "status", "error_code", "error_diag", "result", "exc"}]}
Pilot -> server
    ``register``  {"pilot", "queue", "host", "pid", "cores", "memory_mb", ...} -> ``registered``
    ``request``   {"pid_", "n", "cores", "memory_mb"} -> ``jobs`` {"jobs": [...]}, possibly later
    ``results``   {"pid_", "outcomes": [...]} -> ``acked`` {"ids": [...]}
    ``heartbeat`` {"pid_", "known": [...], "running": {...}} -> ``hb`` {"kill": [...], "epoch"}
    ``bye``       {"pid_"}
Any -> any
    ``error``     {"message"}
"""

from __future__ import annotations

from typing import Any

import msgpack

PROTOCOL_VERSION = 1


def encode(message: dict[str, Any]) -> bytes:
    """Serialize one protocol map."""
    return msgpack.packb(message, use_bin_type=True)


def decode(frame: bytes) -> dict[str, Any]:
    """Deserialize one protocol map; raises ``ValueError`` on anything that is not a map."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"undecodable message: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("message is not a map")
    return message
