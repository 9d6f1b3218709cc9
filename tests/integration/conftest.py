"""Integration fixtures: a database per test (SQLite file or a fresh PostgreSQL database), a
real job server subprocess, pilot subprocesses and a parsl DataFlowKernel attached to the server.

PostgreSQL comes from ``$PANDAFLOW_TEST_PG_URL`` (a role allowed to CREATE DATABASE). Without it
the postgres cases are skipped, unless ``PANDAFLOW_TEST_PG_REQUIRED=1`` (CI) makes them fail.
"""

from __future__ import annotations

import os
import secrets

import pytest
from support.databases import BOTH, database_url
from support.processes import PilotProcess, ServerProcess, heartbeating, pythonpath
from support.waiting import connected, wait_until

from pandaflow.executors import PandaExecutor
from pandaflow.server.store.db import make_engine


@pytest.fixture(params=BOTH)
def db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    yield from database_url(request.param, tmp_path, "pandaflow.db")


@pytest.fixture
def sqlite_url(tmp_path):
    """For the tests that need not run on both databases."""
    return f"sqlite:///{tmp_path / 'pandaflow.db'}"


@pytest.fixture(autouse=True)
def _processes(process_tag, monkeypatch):
    """Every integration test kills what it started, whatever happens; and pilots can import the
    test modules, where the apps are defined (parsl pickles functions by reference)."""
    monkeypatch.setenv("PYTHONPATH", pythonpath(os.path.dirname(os.path.abspath(__file__))))
    return process_tag


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture
def start_server(tmp_path, token):
    """``start_server(db_url)`` runs a job server subprocess (0.5 s heartbeats, lost after 2 s)."""
    servers: list[ServerProcess] = []

    def start(url: str, **options) -> ServerProcess:
        srv = ServerProcess(url, tmp_path / f"server{len(servers)}", token, **options)
        servers.append(srv)
        return srv.start()

    yield start
    for srv in servers:
        srv.stop()
        print(f"----- {srv.log_path} (end) -----\n{srv.log()}")  # shown when the test failed


@pytest.fixture
def server(db_url, start_server) -> ServerProcess:
    # db_url first: its database is dropped only after the server has stopped.
    return start_server(db_url)


@pytest.fixture
def start_pilot(tmp_path, token):
    """``start_pilot(server, cores=1, name=None, heartbeat=False)`` runs a pilot subprocess on the
    server's queue; with ``heartbeat=True`` it returns once the server has had a heartbeat from it."""
    pilots: list[PilotProcess] = []

    def start(srv: ServerProcess, heartbeat: bool = False, **options) -> PilotProcess:
        pilot = PilotProcess(srv.zmq_endpoint, token, tmp_path / "pilots", **options)
        pilots.append(pilot)
        pilot.start()
        if heartbeat:
            wait_until(lambda: heartbeating(srv, pilot.name), timeout=60, what=f"a heartbeat of {pilot.name}",
                       interval=0.1)  # fmt: skip
        return pilot

    yield start
    for pilot in pilots:
        pilot.stop()
        print(f"----- {pilot.log_path} (end) -----\n{pilot.log()}")  # shown when the test failed


@pytest.fixture
def db(server):
    """A SQLAlchemy engine on the server's database, for looking at what it recorded."""
    engine = make_engine(server.db_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def attach(load_parsl, token):
    """``attach(server)`` loads parsl with a PandaExecutor attached to the running server."""

    def load(srv: ServerProcess, **options) -> PandaExecutor:
        executor = PandaExecutor(label="panda", server_url=srv.url, token=token, **options)
        load_parsl(executor)
        connected(executor)
        return executor

    return load
