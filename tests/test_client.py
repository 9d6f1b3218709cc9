"""Finding a server: its ZeroMQ endpoint asked over REST (``pandaflow.client.discover``, what pilots,
harvesters and executors use), and which server a client talks to (``config.server_url``)."""

import json
import time

import pytest
from support.ports import free_port
from support.servers import serving

from pandaflow import config
from pandaflow.client import Client, ClientError, discover


@pytest.fixture
def live_server(tmp_path):
    with serving(f"sqlite:///{tmp_path / 'live.db'}", "t") as srv:
        yield srv


def test_discover_returns_the_dispatcher_endpoint_of_a_running_server(live_server):
    assert discover(live_server.url, "t") == live_server.dispatcher.endpoint
    assert Client(live_server.url, "t").discover_zmq() == live_server.dispatcher.endpoint


def test_a_refused_token_fails_at_once_without_waiting_for_the_timeout(live_server):
    started = time.monotonic()
    with pytest.raises(ClientError, match=r"refused the token \(401\)") as refused:
        discover(live_server.url, "wrong", timeout=30)
    assert refused.value.status == 401 and time.monotonic() - started < 10


def test_a_server_that_never_answers_fails_after_the_timeout_saying_why():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClientError, match=rf"cannot reach server {url} within 1 s: cannot reach"):
        discover(url, "t", timeout=1)


def test_the_server_named_wins_over_the_one_this_machine_last_started(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path))
    assert config.server_url(None) is None
    (tmp_path / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:8800"}))
    assert config.server_url(None) == "http://127.0.0.1:8800"
    assert config.server_url("http://elsewhere:8800") == "http://elsewhere:8800"
