"""Named runs and orphaned jobs, with real processes: a parsl driver script is SIGKILLed and run
again (:mod:`rerun_driver`), against the embedded server or a server of its own."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from support.drivers import ScriptRun
from support.processes import PilotProcess, ServerProcess, pythonpath
from support.waiting import wait_until

from pandaflow.executors import PandaExecutor
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import make_engine

HERE = Path(__file__).parent
DRIVER = HERE / "rerun_driver.py"


class Driver(ScriptRun):
    """One run of :mod:`rerun_driver` (its first argument, the output directory, is ``out``)."""

    def __init__(self, out: Path, env: dict[str, str], *args: str):
        super().__init__(DRIVER, out, env, str(out), *args)

    def results(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("result ")]


@pytest.fixture
def env(tmp_path, process_tag):
    return dict(os.environ, PANDAFLOW_HOME=str(tmp_path / "home"), PYTHONPATH=pythonpath(HERE))


def executions(out: Path) -> list[int]:
    path = out / "executions"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_a_named_run_killed_and_run_again_gets_back_what_finished(tmp_path, env):
    n = 16
    first = Driver(tmp_path, env, str(n), "0.5", "nightly-1")
    wait_until(lambda: len(first.results()) >= 5, timeout=120, what="5 results of the first run")
    first.kill9()
    finished_before = set(first.results())
    ran_before = executions(tmp_path)

    second = Driver(tmp_path, env, str(n), "0.5", "nightly-1")
    assert second.wait(180) == 0, second.log.read_text()
    assert sorted(second.results()) == list(range(n))
    runs = executions(tmp_path)
    again = runs[len(ran_before) :]
    # What finished before the kill came back from the server: not one of those ran again.
    assert not finished_before & set(again), (finished_before, again)
    # Only tasks that had started but not reported when the driver (and its embedded pilot) died
    # may run twice; everything else ran once.
    started_unfinished = set(ran_before) - finished_before
    twice = {i for i in range(n) if runs.count(i) > 1}
    assert twice <= started_unfinished, (twice, started_unfinished)
    assert sorted(set(runs)) == list(range(n))
    # The run kept one database, where the rerun found it.
    assert (Path(env["PANDAFLOW_HOME"]) / "runs" / "nightly-1" / "driver.lock").exists()


def test_a_second_driver_of_the_same_run_is_refused(tmp_path, monkeypatch, process_tag):
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "home"))
    one = PandaExecutor(label="one", run_name="twice", workers=1)
    one.run_dir = str(tmp_path / "one")
    one.start()
    try:
        other = PandaExecutor(label="two", run_name="twice", workers=1)
        other.run_dir = str(tmp_path / "two")
        with pytest.raises(RuntimeError, match=r"run 'twice' is already being driven by process \d+"):
            other.start()
    finally:
        one.shutdown()


@pytest.mark.parametrize("name", ["", "a b", "../up", "-x", "x" * 101])
def test_a_bad_run_name_is_refused_before_anything_starts(name):
    with pytest.raises(ValueError, match="run_name .*letters, digits"):
        PandaExecutor(run_name=name)


def test_orphan_grace_must_be_seconds():
    with pytest.raises(ValueError, match="orphan_grace=-1: give seconds >= 0"):
        PandaExecutor(orphan_grace=-1)


@pytest.fixture
def server(tmp_path, process_tag):
    srv = ServerProcess(
        f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "server", "s3cret", heartbeat_interval=0.3
    )
    srv.start()
    yield srv
    srv.stop()


def _jobs(srv: ServerProcess) -> list:
    engine = make_engine(srv.db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(s.jobs.c.uid, s.jobs.c.status, s.jobs.c.error_diag.label("error"))
            ).all()
    finally:
        engine.dispose()


def test_the_jobs_of_a_driver_that_died_are_cancelled_after_its_grace(tmp_path, env, server):
    # No pilot serves this server: the driver's jobs wait, ready, until their driver dies.
    env = dict(env, PANDAFLOW_TOKEN=server.token)
    driver = Driver(tmp_path, env, "6", "0", "-", server.url, "2")
    wait_until(lambda: len(_jobs(server)) == 6, timeout=60, what="6 jobs stored")
    time.sleep(3)  # longer than the grace: a live driver's jobs are kept
    assert {row.status for row in _jobs(server)} == {"ready"}
    driver.kill9()
    wait_until(
        lambda: {row.status for row in _jobs(server)} == {"cancelled"},
        timeout=30,
        what="the orphaned jobs cancelled",
    )
    error = _jobs(server)[0].error
    assert "orphaned: the executor" in error and "its grace is 2 s" in error, error


def test_a_named_run_re_attaches_to_jobs_still_waiting_on_a_server(tmp_path, env, server):
    env = dict(env, PANDAFLOW_TOKEN=server.token)
    first = Driver(tmp_path, env, "4", "0", "fetch", server.url, "0")
    wait_until(lambda: len(_jobs(server)) == 4, timeout=60, what="4 jobs stored")
    first.kill9()
    uids = sorted(row.uid for row in _jobs(server))
    time.sleep(1.5)
    assert {row.status for row in _jobs(server)} == {"ready"}  # grace 0: kept forever

    second = Driver(tmp_path, env, "4", "0", "fetch", server.url, "0")
    wait_until(lambda: "submitted" in second.lines(), timeout=60, what="the rerun submitted")
    time.sleep(1)
    assert sorted(row.uid for row in _jobs(server)) == uids  # re-attached: no second copy
    # A pilot comes: the rerun gets all four results, each computed once.
    pilot = PilotProcess(server.zmq_endpoint, server.token, tmp_path / "pilot", cores=2).start()
    try:
        assert second.wait(120) == 0, second.log.read_text()
    finally:
        pilot.stop()
    assert sorted(second.results()) == [0, 1, 2, 3]
    assert sorted(executions(tmp_path)) == [0, 1, 2, 3]
