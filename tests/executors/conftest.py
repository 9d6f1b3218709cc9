"""PandaExecutor fixtures: embedded executors (their own server and pilots) loaded in parsl."""

from __future__ import annotations

import os

import pytest
from support.processes import pythonpath
from support.waiting import connected

from pandaflow.executors import PandaExecutor
from pandaflow.server.store.db import make_engine

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _importable_apps(monkeypatch):
    # Pilots unpickle the apps by reference: they must import the test modules defining them.
    monkeypatch.setenv("PYTHONPATH", pythonpath(HERE))


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
        mp.setenv("PYTHONPATH", pythonpath(HERE))
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
