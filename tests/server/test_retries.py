"""Memory-aware retries with ctrl_bps semantics, and exit codes that are never retried."""

import time

import pytest
from sqlalchemy import select

from pandaflow import protocol
from pandaflow.errorcodes import ErrorCode
from pandaflow.server.dispatch import assignment, completion
from pandaflow.server.jobs import pilots, submission
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.jobs.queues import parse_queues
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database

QUEUES = [
    {"name": "Rubin", "max_memory_mb": 4096, "cores": 4},
    {"name": "Rubin_Medium", "min_memory_mb": 4096, "max_memory_mb": 8192, "cores": 4},
    {"name": "Rubin_Himem", "min_memory_mb": 8192, "max_memory_mb": 18432, "cores": 4},
]


@pytest.fixture
def farm(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'r.db'}")
    broker = Broker(parse_queues(QUEUES))
    yield engine, broker
    engine.dispose()


def submit(farm, **job):
    engine, broker = farm
    clean = submission.validate([{"command": "run-qbb", "max_attempts": 3, **job}], broker)
    with engine.begin() as conn:
        return submission.store(conn, clean, submission.WorkflowBook(), workflow="w").ids[clean[0]["uid"]]


def job_row(farm, job_id):
    with farm[0].connect() as conn:
        return conn.execute(select(s.jobs).where(s.jobs.c.id == job_id)).mappings().one()


def attempt_fails(farm, job_id, code, exit_code=None):
    """Dispatch the job from its current queue and report a failed attempt."""
    engine, broker = farm
    row = job_row(farm, job_id)
    now = time.time()
    with engine.begin() as conn:
        pilot = pilots.register(conn, {"pilot": f"p-{row['queue']}", "queue": row["queue"], "cores": 4}, now)
        [dispatched] = assignment.assign(conn, pilot_id=pilot, queue=row["queue"], n=1, now=now)
        completion.record(
            conn,
            [protocol.Outcome(job_id=job_id, attempt=dispatched.attempt, ok=False, error_code=int(code),
                              error_diag="killed", exit_code=exit_code)],
            now,
            broker,
        )  # fmt: skip
    return job_row(farm, job_id)


def test_an_out_of_memory_attempt_is_retried_with_more_memory_on_a_queue_that_holds_it(farm):
    job = submit(farm, memory_mb=3000, memory_multiplier=2.0)
    assert job_row(farm, job)["queue"] == "Rubin"
    row = attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    assert (row["status"], row["memory_mb"], row["queue"]) == ("ready", 6000, "Rubin_Medium")
    assert "retrying with 6000 MB on Rubin_Medium" in row["error_diag"]


def test_the_grown_request_is_capped_by_memory_max(farm):
    job = submit(farm, memory_mb=3000, memory_multiplier=4.0, memory_max_mb=8000)
    row = attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    assert (row["memory_mb"], row["queue"]) == (8000, "Rubin_Medium")


def test_a_job_already_at_its_memory_maximum_fails_for_good(farm):
    job = submit(farm, memory_mb=4000, memory_multiplier=2.0, memory_max_mb=4000)
    row = attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    assert row["status"] == "failed" and "already at its maximum" in row["error_diag"]


def test_a_job_that_outgrows_every_queue_gets_the_largest_then_fails_saying_why(farm):
    job = submit(farm, memory_mb=16000, memory_multiplier=2.0)
    row = attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    assert (row["status"], row["memory_mb"], row["queue"]) == ("ready", 18432, "Rubin_Himem")
    row = attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    assert row["status"] == "failed"
    assert "no queue can hold more than 18432 MB for this job" in row["error_diag"]


def test_a_job_without_a_multiplier_grows_by_its_queues(farm):
    job = submit(farm, memory_mb=3000)  # the queues' default multiplier: 2
    row = attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    assert (row["status"], row["memory_mb"], row["queue"]) == ("ready", 6000, "Rubin_Medium")


def test_a_multiplier_of_one_turns_escalation_off(farm):
    job = submit(farm, memory_mb=3000, memory_multiplier=1)
    row = attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    assert (row["status"], row["memory_mb"], row["queue"]) == ("ready", 3000, "Rubin")


def test_a_queue_multiplier_of_one_keeps_the_request(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'q.db'}")
    broker = Broker(parse_queues([{"name": "flat", "max_memory_mb": 9000, "memory_multiplier": 1}]))
    job = submit((engine, broker), memory_mb=3000)
    row = attempt_fails((engine, broker), job, ErrorCode.OUT_OF_MEMORY)
    assert (row["status"], row["memory_mb"]) == ("ready", 3000)
    engine.dispose()


def test_each_attempt_records_the_memory_it_asked(farm):
    job = submit(farm, memory_mb=3000)
    attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    with farm[0].connect() as conn:
        asked = conn.execute(
            select(s.attempts.c.memory_mb).where(s.attempts.c.job_id == job).order_by(s.attempts.c.attempt)
        ).scalars().all()  # fmt: skip
    assert asked == [3000, 6000]


def test_every_attempt_is_recorded_with_the_queue_it_ran_on(farm):
    job = submit(farm, memory_mb=3000, memory_multiplier=2.0)
    attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    attempt_fails(farm, job, ErrorCode.OUT_OF_MEMORY)
    with farm[0].connect() as conn:
        history = conn.execute(
            select(s.attempts.c.attempt, s.attempts.c.queue, s.attempts.c.error_code)
            .where(s.attempts.c.job_id == job).order_by(s.attempts.c.attempt)
        ).all()  # fmt: skip
    assert history == [(1, "Rubin", ErrorCode.OUT_OF_MEMORY), (2, "Rubin_Medium", ErrorCode.OUT_OF_MEMORY)]
    assert job_row(farm, job)["queue"] == "Rubin_Himem"


def test_an_exit_code_listed_in_retry_unless_exit_is_not_retried(farm):
    job = submit(farm, retry_unless_exit=[3])
    row = attempt_fails(farm, job, ErrorCode.PAYLOAD_NONZERO_EXIT, exit_code=3)
    assert row["status"] == "failed" and "exit code 3 is never retried" in row["error_diag"]


def test_other_exit_codes_are_retried(farm):
    job = submit(farm, retry_unless_exit=[3])
    assert attempt_fails(farm, job, ErrorCode.PAYLOAD_NONZERO_EXIT, exit_code=1)["status"] == "ready"


def test_a_retried_job_waits_without_the_times_of_its_failed_attempt(farm):
    job = submit(farm)
    row = attempt_fails(farm, job, ErrorCode.WALLTIME_EXCEEDED)
    assert row["status"] == "ready" and row["started_at"] is None and row["ended_at"] is None


@pytest.mark.parametrize(
    "field,message",
    [({"memory_multiplier": 0.5}, "memory_multiplier: expected a number from 1 to 100, got 0.5"),
     ({"memory_mb": 5000, "memory_max_mb": 4000}, "is below memory_mb"),
     ({"retry_unless_exit": ["3"]}, r"retry_unless_exit\[0\]: expected an integer, got '3'"),
     ({"retry_unless_exit": 3}, r"retry_unless_exit: expected a list of exit codes \(integers\), got 3")],
)  # fmt: skip
def test_bad_retry_settings_are_refused(farm, field, message):
    with pytest.raises(submission.SubmissionError, match=message):
        submit(farm, **field)


def test_recording_outcomes_holds_the_write_lock_from_its_first_read(farm, tmp_path, monkeypatch):
    """SQLite: no other writer may move the jobs between the read of their state and the guarded
    update (a watchdog taking a lost pilot's jobs back there made the update find none)."""
    import sqlite3

    engine, broker = farm
    job_id = submit(farm)
    now = time.time()
    with engine.begin() as conn:
        pilot = pilots.register(conn, {"pilot": "p", "queue": "Rubin", "cores": 4}, now)
        [dispatched] = assignment.assign(conn, pilot_id=pilot, queue="Rubin", n=1, now=now)
    other_writer: list[str] = []

    def meanwhile(*args, **kwargs):
        other = sqlite3.connect(tmp_path / "r.db", timeout=0.1)
        try:
            other.execute("UPDATE jobs SET status='ready' WHERE id=?", (job_id,))
            other.commit()
            other_writer.append("wrote")
        except sqlite3.OperationalError as exc:
            other_writer.append(str(exc))
        finally:
            other.close()
        return real_apply(*args, **kwargs)

    real_apply = completion.states.apply
    monkeypatch.setattr(completion.states, "apply", meanwhile)
    with engine.begin() as conn:
        outcome = protocol.Outcome(job_id=job_id, attempt=dispatched.attempt, ok=True)
        completion.record(conn, [outcome], now, broker)
    assert other_writer == ["database is locked"]
    assert job_row(farm, job_id)["status"] == "finished"


def test_one_report_may_retry_one_job_and_fail_another(farm):
    """A pilot's report mixes outcomes: a retry (with its new memory and queue) beside a final
    failure. Each event writes only its own jobs' columns (this report used to be refused)."""
    engine, broker = farm
    grows = submit(farm, memory_mb=2000, memory_multiplier=2.0)
    ends = submit(farm, memory_mb=1000, max_attempts=1)
    now = time.time()
    with engine.begin() as conn:
        pilot = pilots.register(conn, {"pilot": "p", "queue": "Rubin", "cores": 4}, now)
        held = assignment.assign(conn, pilot_id=pilot, queue="Rubin", n=2, now=now)
    attempt = {j.job_id: j.attempt for j in held}
    oom = int(ErrorCode.OUT_OF_MEMORY)
    outcomes = [
        protocol.Outcome(job_id=grows, attempt=attempt[grows], ok=False, error_code=oom, error_diag="killed"),
        protocol.Outcome(job_id=ends, attempt=attempt[ends], ok=False, error_code=oom, error_diag="killed"),
    ]
    with engine.begin() as conn:
        done = completion.record(conn, outcomes, now, broker)
    assert (done.retried, done.final) == (1, 1)
    assert (job_row(farm, grows)["status"], job_row(farm, grows)["memory_mb"]) == ("ready", 4000)
    assert (job_row(farm, ends)["status"], job_row(farm, ends)["memory_mb"]) == ("failed", 1000)
