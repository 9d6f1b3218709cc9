"""PandaExecutor fixtures: embedded executors (their own server and pilots) loaded in parsl."""

from __future__ import annotations

import os
import time

import pytest

from pandaflow.executors import PandaExecutor
from pandaflow.server.db import make_engine

HERE = os.path.dirname(os.path.abspath(__file__))


def connected(executor: PandaExecutor) -> PandaExecutor:
    """Wait until the executor's reply socket has heard the server (its first pong): a submission
    sent before may have its acknowledgement dropped and wait 10 s for a resend."""
    deadline = time.monotonic() + 60
    while executor._epoch is None:
        assert time.monotonic() < deadline, "the executor did not reach its server within 60 s"
        time.sleep(0.05)
    return executor


def _with_this_directory(pythonpath: str | None) -> str:
    # Pilots unpickle the apps by reference: they must import the test modules defining them.
    return os.pathsep.join(filter(None, [HERE, pythonpath]))


@pytest.fixture(autouse=True)
def _importable_apps(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", _with_this_directory(os.environ.get("PYTHONPATH")))


@pytest.fixture
def embedded(process_tag, load_parsl):
    """``embedded(**options)`` loads parsl with an embedded PandaExecutor (server + local pilot)."""

    def load(**options) -> PandaExecutor:
        options.setdefault("workers", 2)
        executor = PandaExecutor(label="panda", **options)
        load_parsl(executor)
        return connected(executor)

    return load


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """One started embedded PandaExecutor without parsl, for calling ``submit`` directly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", _with_this_directory(os.environ.get("PYTHONPATH")))
        mp.delenv("PANDAFLOW_TEST_TAG", raising=False)  # not one test's processes: the module's
        executor = PandaExecutor(label="panda", workers=1)
        executor.run_dir = str(tmp_path_factory.mktemp("started"))
        executor.start()
    try:
        connected(executor)
        yield executor
    finally:
        executor.shutdown()


@pytest.fixture
def recorded():
    """``recorded(executor)``: an engine on the executor's database (disposed afterwards)."""
    engines = []

    def open_db(executor: PandaExecutor):
        engine = make_engine(executor.db_url, pool_size=1)
        engines.append(engine)
        return engine

    yield open_db
    for engine in engines:
        engine.dispose()
