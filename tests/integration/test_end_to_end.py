"""End to end: parsl apps and REST workflows through a real job server subprocess and real pilot
subprocesses, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from parsl import bash_app, python_app
from parsl.app.errors import BashExitFailure
from support.lookups import attempts_of, jobs_of_task
from support.waiting import wait_until

from pandaflow.errorcodes import ErrorCode
from pandaflow.executors import SubmissionRefused, TaskFailed

RESULT_TIMEOUT = 120  # seconds a future gets; generous, tests never assert on timing


class WorkflowError(Exception):
    """An exception type of the user's own, which must come back as itself."""


@python_app
def square(x):
    return x * x


@python_app
def raise_workflow_error(message):
    raise WorkflowError(message)


@bash_app
def write_word(path, word):
    return f"echo {word} > {path}"


@bash_app
def exit_with(code):
    return f"exit {code}"


@python_app
def hold_memory(mb, seconds, parsl_resource_specification=None):
    import time

    block = b"x" * (mb << 20)  # written, so resident
    time.sleep(seconds)
    return len(block)


@python_app
def one(parsl_resource_specification=None):
    return 1


@python_app
def sleep_for(seconds, parsl_resource_specification=None):
    import time

    time.sleep(seconds)
    return seconds


@python_app
def worker_dies(parsl_resource_specification=None):
    import os

    os._exit(17)


@python_app
def dies_on_first_attempt(value):
    import os

    if os.environ.get("PANDAFLOW_ATTEMPT") == "1":
        os._exit(17)
    return value


def only_job(db, task):
    rows = jobs_of_task(db, task)
    assert len(rows) == 1, f"expected one job of task {task!r}, found {len(rows)}"
    return rows[0]


# ---------------------------------------------------------------- results and errors


def test_python_app_results_come_back_through_server_and_pilot(server, start_pilot, attach, db):
    start_pilot(server, cores=2)
    attach(server)
    futures = [square(i) for i in range(20)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [i * i for i in range(20)]
    rows = jobs_of_task(db, "square")
    assert len(rows) == 20
    assert {r.status for r in rows} == {"finished"}


def test_bash_app_runs_on_a_pilot_and_returns_its_exit_code(server, start_pilot, attach, tmp_path):
    start_pilot(server)
    attach(server)
    target = tmp_path / "word.txt"
    assert write_word(str(target), "hello").result(timeout=RESULT_TIMEOUT) == 0
    assert target.read_text() == "hello\n"


def test_a_failing_bash_app_raises_bash_exit_failure_with_its_exit_code(server, start_pilot, attach):
    start_pilot(server)
    attach(server)
    with pytest.raises(BashExitFailure) as failure:
        exit_with(3).result(timeout=RESULT_TIMEOUT)
    assert failure.value.exitcode == 3


def test_an_app_exception_reaches_the_future_with_its_original_type(server, start_pilot, attach):
    start_pilot(server)
    attach(server)
    with pytest.raises(WorkflowError, match="bad input 42"):
        raise_workflow_error("bad input 42").result(timeout=RESULT_TIMEOUT)


def test_an_app_that_raises_is_recorded_as_failed_with_payload_exception(server, start_pilot, attach, db):
    start_pilot(server)
    attach(server)
    with pytest.raises(WorkflowError):
        raise_workflow_error("bad input 42").result(timeout=RESULT_TIMEOUT)
    job = only_job(db, "raise_workflow_error")
    assert (job.status, job.error_code) == ("failed", ErrorCode.PAYLOAD_EXCEPTION)
    assert attempts_of(db, job.id) == [(1, "failed", ErrorCode.PAYLOAD_EXCEPTION)]  # parsl owns app retries


# ---------------------------------------------------------------- limits and attempts


def test_a_task_over_its_memory_limit_is_killed_on_every_attempt_then_fails(server, start_pilot, attach, db):
    start_pilot(server)
    attach(server)
    future = hold_memory(300, 5, parsl_resource_specification={"memory": 100, "max_attempts": 2})
    with pytest.raises(TaskFailed) as failure:
        future.result(timeout=RESULT_TIMEOUT)
    assert failure.value.error_code == ErrorCode.OUT_OF_MEMORY
    assert failure.value.status == "failed"
    job = only_job(db, "hold_memory")
    assert (job.status, job.attempt, job.error_code) == ("failed", 2, ErrorCode.OUT_OF_MEMORY)
    assert attempts_of(db, job.id) == [
        (1, "failed", ErrorCode.OUT_OF_MEMORY),
        (2, "failed", ErrorCode.OUT_OF_MEMORY),
    ]


def test_a_task_over_its_walltime_is_killed_with_walltime_exceeded(server, start_pilot, attach, db):
    start_pilot(server)
    attach(server)
    future = sleep_for(10, parsl_resource_specification={"running_time_min": 0.02, "max_attempts": 1})
    with pytest.raises(TaskFailed) as failure:
        future.result(timeout=RESULT_TIMEOUT)
    assert failure.value.error_code == ErrorCode.WALLTIME_EXCEEDED
    job = only_job(db, "sleep_for")
    assert job.walltime_s == pytest.approx(1.2)
    assert attempts_of(db, job.id) == [(1, "failed", ErrorCode.WALLTIME_EXCEEDED)]


def test_max_attempts_in_the_resource_specification_bounds_the_retries(server, start_pilot, attach, db):
    start_pilot(server)
    attach(server)
    with pytest.raises(TaskFailed) as failure:
        worker_dies(parsl_resource_specification={"max_attempts": 3}).result(timeout=RESULT_TIMEOUT)
    assert failure.value.error_code == ErrorCode.WORKER_DIED
    job = only_job(db, "worker_dies")
    assert (job.max_attempts, job.attempt) == (3, 3)
    assert attempts_of(db, job.id) == [(n, "failed", ErrorCode.WORKER_DIED) for n in (1, 2, 3)]


def test_a_task_that_fails_for_an_infrastructure_reason_succeeds_on_its_retry(
    server, start_pilot, attach, db
):
    start_pilot(server)
    attach(server)
    assert dies_on_first_attempt("second time lucky").result(timeout=RESULT_TIMEOUT) == "second time lucky"
    job = only_job(db, "dies_on_first_attempt")
    assert (job.status, job.attempt) == ("finished", 2)
    assert attempts_of(db, job.id) == [(1, "failed", ErrorCode.WORKER_DIED), (2, "finished", 0)]


def test_a_task_the_server_fails_to_store_fails_its_future_with_submission_refused(
    start_server, sqlite_url, attach
):
    server = start_server(sqlite_url)
    attach(server)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:  # the database refuses new jobs
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'no room'); END")
    future = one()
    wait_until(lambda: "rolled back 1 messages" in server.log(), what="the server to fail storing the task")
    probe = one(parsl_resource_specification={"cores": 1000})  # refused at once, answered the same way
    with pytest.raises(SubmissionRefused):
        probe.result(timeout=RESULT_TIMEOUT)
    wait_until(future.done, timeout=5, what="the first task's refusal, answered before the probe's")
    with pytest.raises(SubmissionRefused, match="no room"):
        future.result(timeout=0)


# ---------------------------------------------------------------- REST workflows


def shell_jobs(prefix, n, **fields):
    return [{"name": f"{prefix}-{i}", "command": "true", **fields} for i in range(n)]


def test_higher_priority_jobs_are_dispatched_first(server, start_pilot):
    low = server.post("/workflows", {"name": "low", "jobs": shell_jobs("low", 4, priority=0)})
    high = server.post("/workflows", {"name": "high", "jobs": shell_jobs("high", 4, priority=10)})
    assert (low.status_code, high.status_code) == (201, 201)
    start_pilot(server, cores=1)
    wait_until(lambda: server.get("/jobs", status="finished")["total"] == 8, what="8 finished jobs")
    jobs = server.get("/jobs")["jobs"]
    dispatched = {j["name"]: j["dispatched_at"] for j in jobs}  # ISO-8601 UTC strings sort as times
    assert max(dispatched[f"high-{i}"] for i in range(4)) <= min(dispatched[f"low-{i}"] for i in range(4))


def test_a_refused_bulk_submission_stores_nothing(server):
    jobs = shell_jobs("fine", 3) + [{"name": "huge", "command": "true", "cores": 1000}]
    reply = server.post("/workflows", {"name": "all-or-nothing", "jobs": jobs})
    assert reply.status_code == 400
    assert any("jobs[3]" in problem for problem in reply.json()["problems"])
    assert server.get("/jobs")["total"] == 0
    assert server.get("/workflows")["total"] == 0


def test_a_submission_the_database_rejects_part_way_stores_nothing(server):
    jobs = shell_jobs("fine", 3) + [{"name": "overflow", "command": "true", "priority": 2**63}]
    reply = server.post("/workflows", {"name": "all-or-nothing", "jobs": jobs})
    assert reply.status_code >= 400
    assert server.get("/jobs")["total"] == 0
    assert server.get("/workflows")["total"] == 0


@pytest.mark.parametrize("field", [{"uid": "u" * 200}, {"priority": 2**31}], ids=["long-uid", "big-priority"])
def test_a_job_value_the_schema_cannot_hold_is_refused_as_a_user_error(server, field):
    reply = server.post("/workflows", {"name": "too-big", "jobs": [{"command": "true", **field}]})
    assert reply.status_code == 400
    assert any(next(iter(field)) in problem for problem in reply.json()["problems"])


def test_the_cli_lists_jobs_with_their_states(server, start_pilot, token):
    jobs = [{"name": "ok", "command": "true"}, {"name": "bad", "command": "exit 1", "max_attempts": 1}]
    server.post("/workflows", {"name": "cli", "jobs": jobs})
    start_pilot(server)
    wait_until(lambda: server.get("/jobs", status="finished,failed")["total"] == 2, what="both jobs to end")
    out = subprocess.run(
        [sys.executable, "-m", "pandaflow.cli", "--server", server.url, "--token", token, "jobs", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    listed = {j["name"]: j["status"] for j in json.loads(out.stdout)["jobs"]}
    assert listed == {"ok": "finished", "bad": "failed"}
