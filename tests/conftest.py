"""Shared fixtures: a real job server state on a temporary SQLite database, and a helper that
moves jobs through their states with the server's own modules (:mod:`support.workload`)."""

from __future__ import annotations

import pytest
from support.peers import RecordingDispatcher
from support.processes import ProcessTag
from support.workload import TEST_QUEUES, Workload

from pandaflow.server.app import ServerState, create_app, sync_queues
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.jobs.queues import parse_queues
from pandaflow.server.store.db import open_database

TOKEN = "t"


@pytest.fixture
def db_url(tmp_path) -> str:
    return "sqlite:///" + str(tmp_path / "t.db")


@pytest.fixture
def engine(db_url):
    engine = open_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def queues(engine):
    found = parse_queues(TEST_QUEUES)
    sync_queues(engine, found)
    return found


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def server_state(engine, queues, dispatcher) -> ServerState:
    return ServerState(engine, queues, Broker(queues), token=TOKEN, dispatcher=dispatcher)


@pytest.fixture
def app(server_state):
    return create_app(server_state)


@pytest.fixture
def api(app):
    """A Flask test client that sends the right bearer token."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


@pytest.fixture
def workload(engine, queues) -> Workload:
    return Workload(engine, Broker(queues))


# ---------------------------------------------------------------- real processes (integration, executors)


@pytest.fixture
def process_tag(monkeypatch) -> ProcessTag:
    """Tag the processes this test starts; kill any of them still alive at teardown."""
    import uuid

    tag = ProcessTag(uuid.uuid4().hex)
    monkeypatch.setenv(ProcessTag.VARIABLE, tag.tag)
    yield tag
    tag.kill_all()


@pytest.fixture
def load_parsl(tmp_path):
    """``load_parsl(*executors, **config)`` loads a parsl Config and returns the DataFlowKernel;
    teardown runs ``dfk.cleanup()`` (even if the test failed) and ``parsl.clear()``."""
    import parsl
    from parsl.config import Config

    loaded = []

    def load(*executors, **config):
        config.setdefault("run_dir", str(tmp_path / "runinfo"))
        config.setdefault("strategy", "none")
        dfk = parsl.load(Config(executors=list(executors), **config))
        loaded.append(dfk)
        return dfk

    yield load
    try:
        for dfk in loaded:
            if not dfk.cleanup_called:  # a test may have cleaned up itself
                dfk.cleanup()
    finally:
        parsl.clear()
