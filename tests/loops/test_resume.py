"""A loop's driver SIGKILLed mid-loop and started again with the same name: no finished
evaluation runs twice, and the loop reaches its budget."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select
from support.drivers import ScriptRun
from support.processes import PilotProcess, ServerProcess, pythonpath
from support.waiting import wait_until

from pandaflow.server.store import schema as s
from pandaflow.server.store.db import make_engine

HERE = Path(__file__).parent
N, PARALLELISM = 20, 4


class Driver(ScriptRun):
    """One run of :mod:`loop_driver`."""

    def __init__(self, out: Path, env: dict[str, str], *args: str):
        super().__init__(HERE / "loop_driver.py", out, env, *args)

    def told(self, name: str) -> int:
        return sum(line.startswith(f"[{name}] trial ") for line in self.lines())


@pytest.fixture
def env(tmp_path, process_tag):
    return dict(
        os.environ,
        PANDAFLOW_HOME=str(tmp_path / "home"),
        PYTHONPATH=pythonpath(HERE),
        LOOP_LOG=str(tmp_path / "evaluations"),
        LOOP_SLEEP="0.4",
    )


def _trials(db_url: str) -> list:
    engine = make_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(select(s.trials.c.number, s.trials.c.params, s.trials.c.state)).all()
    finally:
        engine.dispose()


def _evaluations(tmp_path: Path) -> list[str]:
    path = tmp_path / "evaluations"
    return (
        [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines()]
        if path.exists()
        else []
    )


def _canon(params: str) -> str:
    return json.dumps(json.loads(params), sort_keys=True)


def test_a_loop_on_the_embedded_default_resumes_after_its_driver_is_killed(tmp_path, env):
    first = Driver(tmp_path, env, "resume-embedded", str(N), str(PARALLELISM))
    wait_until(lambda: first.told("resume-embedded") >= 8, timeout=120, what="8 trials told")
    first.kill9()
    db_url = f"sqlite:///{tmp_path / 'home' / 'runs' / 'loop-resume-embedded' / 'pandaflow.db'}"
    before = _trials(db_url)
    finished = {_canon(t.params) for t in before if t.state == "complete"}
    assert len(finished) >= 8

    second = Driver(tmp_path, env, "resume-embedded", str(N), str(PARALLELISM))
    assert second.wait(180) == 0, second.log.read_text()
    out = second.log.read_text()
    assert "[resume-embedded] resuming:" in out and f"complete {N}" in out
    after = _trials(db_url)
    assert len(after) == N and {t.state for t in after} == {"complete"}
    runs = _evaluations(tmp_path)
    # A finished evaluation was read back, not run again ...
    assert all(runs.count(p) == 1 for p in finished), [p for p in finished if runs.count(p) != 1]
    # ... only those in flight when the driver died (its embedded pilot died with it) ran twice.
    assert len(runs) <= N + PARALLELISM


def test_a_loop_re_attaches_to_evaluations_that_went_on_without_their_driver(tmp_path, env):
    server = ServerProcess(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "server", "s3cret").start()
    pilot = PilotProcess(
        server.zmq_endpoint, server.token, tmp_path / "pilot", cores=PARALLELISM, extra=["--prefetch", "0"]
    )
    env = dict(env, PANDAFLOW_TOKEN=server.token)
    try:
        pilot.env.update(PYTHONPATH=env["PYTHONPATH"], LOOP_LOG=env["LOOP_LOG"], LOOP_SLEEP=env["LOOP_SLEEP"])
        pilot.start()
        first = Driver(tmp_path, env, "resume-served", str(N), str(PARALLELISM), server.url)
        wait_until(lambda: first.told("resume-served") >= 6, timeout=120, what="6 trials told")
        first.kill9()
        in_flight = [t.number for t in _trials(server.db_url) if t.state == "running"]
        assert in_flight, "the driver was killed with nothing in flight"

        second = Driver(tmp_path, env, "resume-served", str(N), str(PARALLELISM), server.url)
        assert second.wait(180) == 0, second.log.read_text()
        out = second.log.read_text()
        assert f"in flight, budget {N}" in out and f"complete {N}" in out
        after = _trials(server.db_url)
        assert len(after) == N and {t.state for t in after} == {"complete"}
        # The pilot kept running the killed driver's evaluations; the rerun took their results:
        # every point was evaluated exactly once.
        runs = _evaluations(tmp_path)
        assert sorted(runs) == sorted(_canon(t.params) for t in after), runs
    finally:
        pilot.stop()
        server.stop()
