"""Worker rows: the 0002 migration, the state table, and the link a pilot makes to its worker
when it registers with ``--worker-id``."""

import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from pandaflow.harvester import workers as w
from pandaflow.server.front import queries
from pandaflow.server.jobs import pilots
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import _alembic_config, open_database


@pytest.fixture
def engine(any_db_url):
    engine = open_database(any_db_url)
    yield engine
    engine.dispose()


def new_worker(engine, queue="q", harvester="h") -> int:
    with engine.begin() as conn:
        return w.create(
            conn, queue=queue, harvester=harvester, provider="fake", cores=2, memory_mb=4000, now=time.time()
        )


def row(engine, worker_id):
    with engine.connect() as conn:
        return conn.execute(select(s.workers).where(s.workers.c.id == worker_id)).mappings().one()


def test_the_migrated_schema_matches_the_tables_the_code_uses(engine):
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        assert {"workers", "harvester_queues"} <= names
        diffs = compare_metadata(MigrationContext.configure(conn), s.metadata)
    # The expression index ix_jobs_dispatch (priority DESC) never reflects identically.
    diffs = [d for d in diffs if "ix_jobs_dispatch" not in str(d)]
    assert [d for d in diffs if "workers" in str(d) or "harvester_queues" in str(d)] == []


def test_the_migration_goes_down_to_0001_and_up_again(engine):
    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with engine.connect() as conn:
        assert "workers" not in inspect(conn).get_table_names()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert new_worker(engine) >= 1


def test_a_new_worker_is_submitted_and_live(engine):
    worker_id = new_worker(engine)
    with engine.begin() as conn:
        w.accepted(conn, worker_id, "123", '{"script_path": "/x"}', time.time())
        live = w.live(conn, queue="q", harvester="h")
    assert [(x.id, x.state, x.provider_job_id, x.cores) for x in live] == [(worker_id, "submitted", "123", 2)]


def test_states_only_move_along_the_table(engine):
    worker_id = new_worker(engine)
    now = time.time()
    with engine.begin() as conn:
        assert w.move(conn, worker_id, w.RUNNING, now, batch_state="RUNNING")
        assert w.move(conn, worker_id, w.FINISHED, now + 5)
        assert not w.move(conn, worker_id, w.FAILED, now + 6, error="too late")  # terminal stays
    r = row(engine, worker_id)
    assert (r["state"], r["started_at"], r["ended_at"], r["error"]) == ("finished", now, now + 5, "")
    with pytest.raises(ValueError, match="no worker state leads to 'submitted'"):
        with engine.begin() as conn:
            w.move(conn, worker_id, w.SUBMITTED, now)


def test_a_registering_pilot_links_its_worker_and_marks_it_running(engine):
    worker_id = new_worker(engine)
    with engine.begin() as conn:
        pilot_id = pilots.register(
            conn, {"pilot": "p1", "queue": "q", "cores": 2, "worker_id": worker_id}, 100.0
        )
    r = row(engine, worker_id)
    assert (r["pilot_id"], r["state"], r["started_at"]) == (pilot_id, "running", 100.0)


def test_a_pilot_that_registers_late_revives_a_worker_given_up_as_missing(engine):
    worker_id = new_worker(engine)
    with engine.begin() as conn:
        w.move(conn, worker_id, w.MISSING, 50.0, error="no pilot within 600 s")
        pilots.register(conn, {"pilot": "p1", "queue": "q", "worker_id": worker_id}, 100.0)
    r = row(engine, worker_id)
    assert (r["state"], r["ended_at"]) == ("running", None)


def test_a_cancelled_worker_stays_cancelled_when_its_pilot_still_registers(engine):
    worker_id = new_worker(engine)
    with engine.begin() as conn:
        w.move(conn, worker_id, w.CANCELLED, 50.0)
        pilot_id = pilots.register(conn, {"pilot": "p1", "queue": "q", "worker_id": worker_id}, 100.0)
    r = row(engine, worker_id)
    assert (r["state"], r["pilot_id"]) == ("cancelled", pilot_id)


def test_a_worker_with_a_pilot_is_never_marked_missing(engine):
    worker_id = new_worker(engine)
    with engine.begin() as conn:
        pilots.register(conn, {"pilot": "p1", "queue": "q", "worker_id": worker_id}, 100.0)
        assert not w.move(conn, worker_id, w.MISSING, 101.0)
    assert row(engine, worker_id)["state"] == "running"


def test_pilots_without_a_worker_id_or_with_a_bad_one_register_as_before(engine):
    with engine.begin() as conn:
        first = pilots.register(conn, {"pilot": "p1", "queue": "q"}, 1.0)
        second = pilots.register(conn, {"pilot": "p2", "queue": "q", "worker_id": "7; DROP"}, 1.0)
    assert first != second


def test_listing_shows_workers_newest_first_with_their_pilot(engine):
    a, b = new_worker(engine), new_worker(engine, queue="other")
    with engine.begin() as conn:
        pilots.register(conn, {"pilot": "p-a", "queue": "q", "worker_id": a}, time.time())
        w.record_queue(conn, "h", "q", {"cycle_at": 1.0, "action": "submitted 1", "error": ""})
        page = queries.list_workers(conn)
        only = queries.list_workers(conn, queue="q", state=["running"])
    assert [x["id"] for x in page["workers"]] == [b, a] and page["total"] == 2
    assert [(x["id"], x["pilot"], x["state"]) for x in only["workers"]] == [(a, "p-a", "running")]
    assert [(q["queue"], q["action"]) for q in page["queues"]] == [("q", "submitted 1")]
    with pytest.raises(ValueError, match="unknown worker state"):
        with engine.connect() as conn:
            queries.list_workers(conn, state="zombie")


def test_the_worker_states_are_those_of_the_workers_table():
    assert w.STATES == (w.SUBMITTED, w.RUNNING, w.FINISHED, w.FAILED, w.CANCELLED, w.MISSING)
    assert set(w.TRANSITIONS) == set(w.STATES)
