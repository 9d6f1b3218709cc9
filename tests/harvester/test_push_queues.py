"""Push queues, one harvester cycle at a time against a real database (SQLite and PostgreSQL) and a
provider double: a submitted worker gets ready jobs reserved for it, its pilot and no other gets
them, and a worker that ends without taking them gives them back."""

import time

import pytest
from parsl.jobs.states import JobState
from sqlalchemy import select
from support.harvest import fake_queue, harvester, queue_set, register_pilot, submit_jobs
from support.lookups import worker_row

from pandaflow.errorcodes import ErrorCode
from pandaflow.harvester import accounting
from pandaflow.harvester import workers as w
from pandaflow.harvester.policy import Limits
from pandaflow.server.dispatch import assignment, completion, push
from pandaflow.server.front import queries
from pandaflow.server.jobs import control
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database


@pytest.fixture
def engine(any_db_url):
    engine = open_database(any_db_url)
    yield engine
    engine.dispose()


def push_queue(name="q", **kw):
    return fake_queue(name, **{"mode": "push", **kw})


def jobs_by_id(engine):
    with engine.connect() as conn:
        return {r["id"]: r for r in conn.execute(select(s.jobs)).mappings()}


def reserved_for(engine, worker_id):
    return sorted(
        j for j, r in jobs_by_id(engine).items() if r["status"] == "reserved" and r["worker_id"] == worker_id
    )


# ---------------------------------------------------------------- reserving


def test_each_worker_submitted_on_a_push_queue_gets_ready_jobs_reserved_that_fill_its_slots(
    engine, tmp_path, fake_provider
):
    queues, broker = queue_set(engine, push_queue())
    ids = submit_jobs(engine, broker, 5)  # 5 one-core jobs, 2-slot workers: 3 workers
    report = harvester(engine, tmp_path, queues).cycle()["q"]
    first, second, third = report.submitted
    assert reserved_for(engine, first) == ids[0:2]
    assert reserved_for(engine, second) == ids[2:4]
    assert reserved_for(engine, third) == ids[4:5]
    assert (
        report.reserved_now == 5
        and "with 5 jobs reserved" in queries.list_workers(engine.connect())["queues"][0]["action"]
    )


def test_the_highest_priority_jobs_are_reserved_first_and_large_ones_leave_room_to_smaller(
    engine, tmp_path, fake_provider
):
    queues, broker = queue_set(engine, push_queue(cores=2, max_workers=1))
    low = submit_jobs(engine, broker, 1, priority=0)
    big = submit_jobs(engine, broker, 1, priority=5, cores=2)
    small = submit_jobs(engine, broker, 1, priority=9)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    # priority order: small (9) takes one slot, big (5) needs two and is skipped, low (0) fills up
    assert reserved_for(engine, worker) == sorted(small + low)
    assert jobs_by_id(engine)[big[0]]["status"] == "ready"


def test_pull_queues_reserve_nothing(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(mode="pull"))
    submit_jobs(engine, broker, 2)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    assert reserved_for(engine, worker) == []
    assert {r["status"] for r in jobs_by_id(engine).values()} == {"ready"}


def test_reserved_jobs_are_neither_demand_nor_supply(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    submit_jobs(engine, broker, 3)
    h = harvester(engine, tmp_path, queues)
    (worker,) = h.cycle()["q"].submitted
    with engine.connect() as conn:
        snap = accounting.snapshot(conn, "q", worker_cores=2, worker_memory_mb=4000)
    # two jobs wait for the worker (its two slots are spoken for), one is still ready
    assert (snap.ready_jobs, snap.reserved_jobs, snap.idle_slots) == (1, 2, 0)
    assert snap.reserved == {worker: (2, 2)}


# ---------------------------------------------------------------- only the worker's pilot gets them


def test_reserved_jobs_are_never_given_to_a_pilot_that_pulls(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    ids = submit_jobs(engine, broker, 2)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    by_hand = register_pilot(engine, None, name="by-hand")
    with engine.begin() as conn:
        assert assignment.assign(conn, pilot_id=by_hand, queue="q", n=10, now=time.time()) == []
        assert push.take(conn, pilot_id=by_hand, n=10, now=time.time()) == []
    assert reserved_for(engine, worker) == ids


def test_the_workers_pilot_takes_exactly_its_reserved_jobs(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue())
    ids = submit_jobs(engine, broker, 4)
    first, second = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    pilot = register_pilot(engine, second, name="p-second")
    with engine.begin() as conn:
        taken = push.take(conn, pilot_id=pilot, n=10, now=time.time())
    assert [j.job_id for j in taken] == ids[2:4]
    assert taken[0].command == "true" and taken[0].attempt == 1
    rows = jobs_by_id(engine)
    assert [(rows[i]["status"], rows[i]["pilot_id"], rows[i]["worker_id"]) for i in ids[2:4]] == [
        ("dispatched", pilot, second)
    ] * 2  # the worker stays recorded on the job
    assert reserved_for(engine, first) == ids[0:2]


def test_a_pilot_asking_for_fewer_jobs_than_reserved_gets_the_rest_on_its_next_request(
    engine, tmp_path, fake_provider
):
    queues, broker = queue_set(engine, push_queue(cores=3, max_workers=1))
    ids = submit_jobs(engine, broker, 3)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    pilot = register_pilot(engine, worker, cores=3)
    with engine.begin() as conn:
        first = push.take(conn, pilot_id=pilot, n=1, now=time.time())
        rest = push.take(conn, pilot_id=pilot, n=5, now=time.time())
    assert [j.job_id for j in first] == ids[:1] and [j.job_id for j in rest] == ids[1:]


# ---------------------------------------------------------------- releasing


def test_a_failed_submission_releases_the_jobs_it_reserved(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    submit_jobs(engine, broker, 2)
    h = harvester(engine, tmp_path, queues)
    h.provider(queues[0], Limits.of(queues[0]))
    fake_provider.instances[0].fail["submit"] = RuntimeError("sbatch: error: invalid partition")
    report = h.cycle()["q"]
    assert report.submitted == [] and report.reserved_now == 0
    assert {(r["status"], r["worker_id"]) for r in jobs_by_id(engine).values()} == {("ready", None)}


def test_a_worker_whose_pilot_never_came_gives_its_jobs_to_the_next_worker(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    ids = submit_jobs(engine, broker, 2)
    h = harvester(engine, tmp_path, queues)
    (first,) = h.cycle()["q"].submitted
    provider = fake_provider.instances[0]
    provider.set_state(provider.submitted[0][0], JobState.FAILED, exit_code=1)
    report = h.cycle()["q"]  # follow: missing, jobs released; count: ready again; submit: a new worker
    assert worker_row(engine, first)["state"] == "missing"
    (second,) = report.submitted
    assert reserved_for(engine, second) == ids


@pytest.mark.parametrize("end", ["cancelled", "finished", "failed"])
def test_a_worker_that_ends_with_jobs_still_reserved_releases_them(engine, tmp_path, fake_provider, end):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    submit_jobs(engine, broker, 2)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    register_pilot(engine, worker)
    with engine.begin() as conn:
        assert w.move(conn, worker, end, time.time())
    assert {(r["status"], r["worker_id"]) for r in jobs_by_id(engine).values()} == {("ready", None)}


def test_a_worker_with_reserved_jobs_is_never_scaled_in(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(max_workers=2, worker_idle_s=0.01))
    h = harvester(engine, tmp_path, queues)
    submit_jobs(engine, broker, 2)
    (with_jobs,) = h.cycle()["q"].submitted
    with engine.begin() as conn:  # an extra worker with nothing reserved, as if left from before
        spare = w.create(
            conn, queue="q", harvester="h1", provider="fake", cores=2, memory_mb=None, now=time.time()
        )
    h._busy_at["q"] -= 10  # the queue has had no ready job for long
    report = h.cycle()["q"]
    assert report.cancelled == [spare]
    assert worker_row(engine, with_jobs)["state"] == "submitted" and len(reserved_for(engine, with_jobs)) == 2


def test_a_user_can_cancel_a_reserved_job(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    ids = submit_jobs(engine, broker, 2)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    with engine.begin() as conn:
        changed = control.cancel(conn, time.time(), job_ids=[ids[0]])
    assert changed.job_ids == [ids[0]] and changed.kill == {}
    assert jobs_by_id(engine)[ids[0]]["status"] == "cancelled" and reserved_for(engine, worker) == ids[1:]


def test_a_retried_attempt_is_reserved_afresh(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    (job_id,) = submit_jobs(engine, broker, 1)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    pilot = register_pilot(engine, worker)
    now = time.time()
    with engine.begin() as conn:
        push.take(conn, pilot_id=pilot, n=1, now=now)
        lost = completion.outcome(job_id, 1, ErrorCode.LOST_HEARTBEAT, "lost")  # retryable
        completion.record(conn, [lost], now)
    row = jobs_by_id(engine)[job_id]
    assert (row["status"], row["worker_id"], row["pilot_id"]) == ("ready", None, None)


# ---------------------------------------------------------------- restarts


def test_a_reservation_survives_a_harvester_restart_and_still_goes_to_its_pilot(
    engine, tmp_path, fake_provider
):
    queues, broker = queue_set(engine, push_queue(max_workers=1))
    ids = submit_jobs(engine, broker, 2)
    (worker,) = harvester(engine, tmp_path, queues).cycle()["q"].submitted
    restarted = harvester(engine, tmp_path, queues)  # a new process: nothing in memory
    report = restarted.cycle()["q"]
    assert report.submitted == [] and report.reserved_jobs == 2
    pilot = register_pilot(engine, worker)
    with engine.begin() as conn:
        assert [j.job_id for j in push.take(conn, pilot_id=pilot, n=4, now=time.time())] == ids


# ---------------------------------------------------------------- migration 0006


def test_the_migrated_schema_matches_the_tables_the_code_uses(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), s.metadata)
    # The expression index ix_jobs_dispatch (priority DESC) never reflects identically.
    assert [d for d in diffs if "ix_jobs_dispatch" not in str(d)] == []


def test_going_down_to_0005_gives_reserved_jobs_back_to_any_pilot(engine, tmp_path, fake_provider):
    from alembic import command
    from sqlalchemy import inspect

    from pandaflow.server.store.db import _alembic_config

    queues, broker = queue_set(engine, push_queue(max_workers=1))
    submit_jobs(engine, broker, 2)
    harvester(engine, tmp_path, queues).cycle()
    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    with engine.connect() as conn:
        assert "worker_id" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
        assert set(conn.execute(select(s.jobs.c.status)).scalars()) == {"ready"}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert {(r["status"], r["worker_id"]) for r in jobs_by_id(engine).values()} == {("ready", None)}
