"""Crashes: a pilot or the server killed with SIGKILL mid-workflow, an embedded executor's
children killed, a pilot asked to stop with SIGTERM. Nothing submitted may be lost or run twice
to completion, and every parsl future must resolve with the right result."""

from __future__ import annotations

import time

from parsl import python_app
from sqlalchemy import select
from support.lookups import attempts_of, job_by_uid_prefix, jobs_of_task
from support.processes import named
from support.waiting import connected, wait_until

from pandaflow.errorcodes import ErrorCode
from pandaflow.executors import PandaExecutor
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import make_engine

RESULT_TIMEOUT = 180  # seconds a future gets after a crash (retries wait for heartbeat timeouts)


@python_app
def mark_then_sleep(marker, value, seconds=4, parsl_resource_specification=None):
    """Write ``marker``, then sleep on the first attempt (long enough to be killed in the middle);
    a retry returns at once."""
    import os
    import pathlib
    import time

    pathlib.Path(marker).write_text("started")
    if os.environ.get("PANDAFLOW_ATTEMPT") == "1":
        time.sleep(seconds)
    return value


@python_app
def triple(i, seconds=0.02):
    import time

    time.sleep(seconds)
    return 3 * i


def pilot_of_attempts(db, job_id):
    """``{attempt: pilot --name}`` for a job's ended attempts (identities lose their suffix)."""
    with db.connect() as conn:
        rows = conn.execute(
            select(s.attempts.c.attempt, s.pilots.c.name)
            .select_from(s.attempts.join(s.pilots, s.pilots.c.id == s.attempts.c.pilot_id))
            .where(s.attempts.c.job_id == job_id)
        ).all()
    return {attempt: name.rsplit("-", 1)[0] for attempt, name in rows}


def pilot_status(db, name):
    with db.connect() as conn:
        rows = conn.execute(select(s.pilots.c.name, s.pilots.c.status)).all()
    (status,) = [status for identity, status in rows if named(identity, name)]
    return status


def assert_each_task_finished_once(engine, client_id, n):
    rows = job_by_uid_prefix(engine, client_id + "-")
    assert len(rows) == n, f"expected {n} jobs of this executor, the database holds {len(rows)}"
    assert len({uid for uid, _ in rows}) == n
    assert {status for _, status in rows} == {"finished"}


# ---------------------------------------------------------------- a pilot crashes


def test_a_task_whose_pilot_is_killed_runs_again_on_another_pilot(server, start_pilot, attach, db, tmp_path):
    pilot_a = start_pilot(server, name="pilot-a", heartbeat=True)
    attach(server)
    marker = tmp_path / "started"
    future = mark_then_sleep(str(marker), "survived")
    wait_until(marker.exists, what="the task to start on pilot A")
    pilot_a.kill9()
    start_pilot(server, name="pilot-b")
    assert future.result(timeout=RESULT_TIMEOUT) == "survived"
    job = jobs_of_task(db, "mark_then_sleep")[0]
    assert (job.status, job.attempt) == ("finished", 2)
    assert attempts_of(db, job.id) == [(1, "failed", ErrorCode.LOST_HEARTBEAT), (2, "finished", 0)]
    assert pilot_of_attempts(db, job.id) == {1: "pilot-a", 2: "pilot-b"}
    assert pilot_status(db, "pilot-a") == "lost"


def test_a_pilot_that_comes_back_after_being_declared_lost_runs_the_retry_it_is_given(
    start_server, sqlite_url, start_pilot, attach, tmp_path
):
    server = start_server(sqlite_url)
    pilot = start_pilot(server, cores=2, heartbeat=True)
    attach(server)
    marker = tmp_path / "started"
    future = mark_then_sleep(str(marker), "back", 60, parsl_resource_specification={"max_attempts": 2})
    wait_until(marker.exists, what="the task to start")
    pilot.freeze()  # the node hangs longer than the heartbeat timeout...
    wait_until(lambda: server.get("/jobs")["jobs"][0]["status"] == "ready", what="the pilot to be lost")
    pilot.thaw()  # ...and comes back, still running the first attempt
    assert future.result(timeout=RESULT_TIMEOUT) == "back"
    job = server.get("/jobs/1")
    assert [(a["attempt"], a["status"], a["error_code"]) for a in job["attempts"]] == [
        (1, "failed", ErrorCode.LOST_HEARTBEAT),
        (2, "finished", 0),
    ]


def test_a_new_pilot_is_not_declared_lost_while_it_runs_its_first_job(start_server, sqlite_url, start_pilot):
    server = start_server(sqlite_url)  # heartbeats every 0.5 s, lost after 2 s of silence
    job = {"name": "long", "command": "sleep 3", "max_attempts": 1}
    server.post("/workflows", {"name": "first-job", "jobs": [job]})
    start_pilot(server)
    ended = wait_until(lambda: server.get("/jobs", status="finished,failed")["jobs"], what="the job to end")
    assert (ended[0]["status"], ended[0]["attempt"]) == ("finished", 1), ended[0]["error_diag"]


# ---------------------------------------------------------------- the server crashes


def test_a_workflow_survives_kill_9_of_the_server_and_its_restart(server, start_pilot, attach, db):
    start_pilot(server, cores=2, heartbeat=True)
    executor = attach(server)
    futures = [triple(i) for i in range(150)]
    wait_until(lambda: sum(f.done() for f in futures) >= 30, what="30 tasks to finish")
    server.kill9()
    assert not all(f.done() for f in futures), "the workflow ended before the crash; make tasks longer"
    futures += [triple(i) for i in range(150, 160)]  # submitted while the server is down
    time.sleep(1)
    server.restart()
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [3 * i for i in range(160)]
    assert_each_task_finished_once(db, executor.client_id, 160)


# ---------------------------------------------------------------- embedded mode supervises its children


def embedded_executor(load_parsl):
    executor = PandaExecutor(label="panda", workers=2)
    load_parsl(executor)
    return connected(executor)


def test_an_embedded_executor_restarts_its_killed_server_and_loses_nothing(load_parsl):
    executor = embedded_executor(load_parsl)
    futures = [triple(i, 0.1) for i in range(60)]
    wait_until(lambda: sum(f.done() for f in futures) >= 10, what="10 tasks to finish")
    first = executor._local.procs["server"]
    first.kill()
    assert not all(f.done() for f in futures), "the workflow ended before the crash; make tasks longer"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [3 * i for i in range(60)]
    assert executor._local.procs["server"].pid != first.pid
    assert executor._local.procs["server"].poll() is None
    engine = make_engine(executor.db_url, pool_size=1)
    try:
        assert_each_task_finished_once(engine, executor.client_id, 60)
    finally:
        engine.dispose()


def test_an_embedded_executor_restarts_its_killed_pilot_and_loses_nothing(load_parsl):
    executor = embedded_executor(load_parsl)
    futures = [triple(i, 0.1) for i in range(60)]
    wait_until(lambda: sum(f.done() for f in futures) >= 10, what="10 tasks to finish")
    first = executor._local.procs["pilot0"]
    first.kill()
    assert not all(f.done() for f in futures), "the workflow ended before the crash; make tasks longer"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [3 * i for i in range(60)]
    assert executor._local.procs["pilot0"].pid != first.pid
    engine = make_engine(executor.db_url, pool_size=1)
    try:
        assert_each_task_finished_once(engine, executor.client_id, 60)
    finally:
        engine.dispose()


# ---------------------------------------------------------------- a pilot is asked to stop


def test_a_pilot_stopped_with_sigterm_hands_its_jobs_back_and_exits(
    start_server, sqlite_url, start_pilot, attach, tmp_path
):
    # Nothing here may hinge on heartbeats: a generous timeout keeps 'lost' out of the picture.
    server = start_server(sqlite_url, heartbeat_timeout=10)
    db = make_engine(sqlite_url, pool_size=1)
    pilot_a = start_pilot(server, name="pilot-a", cores=1)  # runs one task, holds one more
    attach(server)
    marker = tmp_path / "started"
    running = mark_then_sleep(str(marker), "first", 60)  # still running whenever pilot A sees SIGTERM
    wait_until(marker.exists, what="the first task to start on pilot A")
    held = mark_then_sleep(str(tmp_path / "second"), "second")
    wait_until(lambda: len(jobs_of_task(db, "mark_then_sleep")) == 2
               and jobs_of_task(db, "mark_then_sleep")[1].status == "dispatched",
               what="pilot A to take the second task too")  # fmt: skip
    pilot_a.terminate()
    assert pilot_a.wait(timeout=60) == 0
    assert pilot_status(db, "pilot-a") == "exited"
    first, second = jobs_of_task(db, "mark_then_sleep")
    assert attempts_of(db, first.id) == [(1, "failed", ErrorCode.PILOT_TERMINATED)]
    # The job it held but never started went back with its attempt unspent.
    assert attempts_of(db, second.id) == []
    assert (first.status, first.attempt, second.status, second.attempt) == ("ready", 1, "ready", 0)
    start_pilot(server, name="pilot-b")
    assert running.result(timeout=RESULT_TIMEOUT) == "first"
    assert held.result(timeout=RESULT_TIMEOUT) == "second"
    assert pilot_of_attempts(db, first.id) == {1: "pilot-a", 2: "pilot-b"}
    assert pilot_of_attempts(db, second.id) == {1: "pilot-b"}
    db.dispose()
