"""Stand-ins for the other side of a connection: a raw ZeroMQ peer playing a pilot or an executor,
a dispatcher that records what it is poked with, and a ``requests`` session that sends a
:class:`~pandaflow.client.Client`'s requests to a Flask test client."""

from __future__ import annotations

import time
from typing import Any

import requests
import zmq

from pandaflow import protocol


class Peer:
    """A DEALER socket named ``name`` on the dispatcher at ``endpoint``, speaking the protocol with
    ``token`` (a pilot or an executor, as the test makes it talk)."""

    def __init__(self, endpoint: str, name: str, token: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.token = token

    def send(self, op: str, **body: Any) -> None:
        self.sock.send(protocol.pack({"tok": self.token, "op": op, **body}))

    def recv(self, op: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next message (of kind ``op``: others are dropped); fail after ``timeout``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.sock.poll(100):
                msg = protocol.unpack(self.sock.recv())
                if op is None or msg["op"] == op:
                    return msg
        raise AssertionError(f"no {op or 'message'} within {timeout} s")

    def close(self) -> None:
        self.sock.close(0)


class RecordingDispatcher:
    """Stands in for the dispatcher thread: records the control messages it is poked with."""

    endpoint = "tcp://127.0.0.1:5555"
    epoch = "test-epoch"

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def poke(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("kind") == kind]


class FlaskSession:
    """A ``requests.Session`` stand-in that sends the client's requests to a Flask test client."""

    def __init__(self, flask_client: Any):
        self.flask = flask_client

    def request(self, method, url, *, params=None, json=None, headers=None, timeout=None):
        reply = self.flask.open(
            url.removeprefix("http://test"), method=method, query_string=params, json=json, headers=headers
        )
        response = requests.Response()
        response.status_code = reply.status_code
        response._content = reply.data
        response.headers.update(reply.headers)
        return response
