"""The watchdog: what happens to the jobs of a pilot that went silent, and to jobs a live pilot
says it never received (LOST_IN_DISPATCH)."""

import time

from sqlalchemy import select, update

from pandaflow.errorcodes import ErrorCode
from pandaflow.server.dispatch import completion, watchdog
from pandaflow.server.jobs import states
from pandaflow.server.store import schema as s


def job(engine, job_id):
    with engine.connect() as conn:
        return dict(conn.execute(select(s.jobs).where(s.jobs.c.id == job_id)).mappings().one())


def start(engine, pilot, job_id):
    with engine.begin() as conn:
        completion.mark_running(conn, pilot, {job_id: time.time()}, time.time())


def test_a_job_a_live_pilot_never_received_goes_back_without_spending_its_attempt(workload, engine):
    (lost,) = workload.submit([{"name": "lost", "max_attempts": 1}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    with engine.begin() as conn:
        done = watchdog.unacknowledged(
            conn, pilot, known=set(), dispatched_before=time.time() + 1, now=time.time()
        )
    assert done.returned == 1 and done.requeued == {"small"}
    row = job(engine, lost)
    assert (row["status"], row["attempt"], row["pilot_id"], row["error_code"]) == ("ready", 0, None, 0)
    with engine.connect() as conn:
        assert states.history(conn, lost)[-1]["reason"] == f"pilot {pilot} never received it"


def test_a_running_job_its_live_pilot_no_longer_holds_fails_its_attempt_with_lost_in_dispatch(
    workload, engine
):
    (gone,) = workload.submit([{"name": "gone", "max_attempts": 2}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    start(engine, pilot, gone)
    with engine.begin() as conn:
        done = watchdog.unacknowledged(
            conn, pilot, known=set(), dispatched_before=time.time() + 1, now=time.time()
        )
    assert done.retried == 1
    row = job(engine, gone)
    assert (row["status"], row["attempt"], row["error_code"]) == ("ready", 1, ErrorCode.LOST_IN_DISPATCH)


def test_jobs_the_pilot_knows_or_that_were_just_dispatched_are_left_alone(workload, engine):
    known, recent = workload.submit([{"name": "known"}, {"name": "recent"}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    with engine.begin() as conn:
        conn.execute(update(s.jobs).where(s.jobs.c.id == recent).values(dispatched_at=time.time() + 60))
        done = watchdog.unacknowledged(
            conn, pilot, known={known}, dispatched_before=time.time() + 1, now=time.time()
        )
    assert (done.returned, done.retried, done.final) == (0, 0, 0)
    assert workload.statuses([known, recent]) == ["dispatched", "dispatched"]


def test_a_silent_pilot_is_lost_its_running_jobs_retried_and_its_unstarted_ones_given_back(workload, engine):
    running, queued = workload.submit([{"name": "running"}, {"name": "queued"}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    start(engine, pilot, running)
    with engine.begin() as conn:
        lost, done = watchdog.sweep(conn, time.time() + 3600, heartbeat_timeout=10)
    assert lost == [pilot] and (done.returned, done.retried) == (1, 1)
    ran, waited = job(engine, running), job(engine, queued)
    assert (ran["status"], ran["attempt"], ran["error_code"]) == ("ready", 1, ErrorCode.LOST_HEARTBEAT)
    assert (waited["status"], waited["attempt"], waited["error_code"]) == ("ready", 0, 0)
    with engine.connect() as conn:
        assert conn.execute(select(s.pilots.c.status).where(s.pilots.c.id == pilot)).scalar_one() == "lost"


def test_a_pilot_that_says_goodbye_with_jobs_left_settles_them(workload, engine):
    running, queued = workload.submit([{"name": "running"}, {"name": "queued"}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    start(engine, pilot, running)
    with engine.begin() as conn:
        done = watchdog.settle_departed(conn, pilot, time.time())
    assert (done.returned, done.retried) == (1, 1)
    assert job(engine, running)["error_code"] == ErrorCode.PILOT_TERMINATED
    assert job(engine, queued)["attempt"] == 0
