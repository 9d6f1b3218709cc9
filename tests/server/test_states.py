"""The transitions table, applied to real job rows: every (state, event) pair, legal and illegal,
and the columns each event sets and clears."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select, update
from support.databases import BOTH, database_url

from pandaflow.server.jobs import states
from pandaflow.server.jobs.states import IllegalTransition
from pandaflow.server.store import schema as s

# A job that has been through an attempt: pilot, times, error and metrics all set.
WORN = {
    "attempt": 1, "max_attempts": 1, "pilot_id": 5, "worker_id": 9, "error_code": 1002, "error_diag": "boom",
    "exit_code": 3, "stdout_tail": "out", "max_rss_mb": 12.0, "max_pss_mb": 11.0, "dispatched_at": 1.0,
    "started_at": 2.0, "ended_at": 3.0,
}  # fmt: skip

# Values the events that own columns are given in these tests.
GIVEN = {
    "reserve": {"worker_id": 4},
    "dispatch": {"pilot_id": 7},
    "start": {"started_at": 50.0},
    "finish": {"error_code": 0, "error_diag": "", "exit_code": 0, "stdout_tail": "t", "max_rss_mb": 1.0,
               "max_pss_mb": 1.0, "started_at": 50.0, "ended_at": 60.0},
    "fail": {"error_code": 1002, "error_diag": "x", "exit_code": 1, "stdout_tail": "t", "max_rss_mb": 1.0,
             "max_pss_mb": 1.0, "started_at": 50.0, "ended_at": 60.0},
    "retry": {"error_code": 1201, "error_diag": "oom", "exit_code": None, "stdout_tail": "t",
              "max_rss_mb": 1.0, "max_pss_mb": 1.0, "memory_mb": 300, "queue": "big"},
    "cancel": {"error_code": 1400, "error_diag": "cancelled by user"},
    "prune": {"error_diag": "an input can never exist"},
}  # fmt: skip

NOW = 100.0


@pytest.fixture(scope="module", params=BOTH)
def db_url(request, tmp_path_factory):
    """The guarded updates and the history run on both databases (one per module: every test
    makes jobs of its own)."""
    yield from database_url(request.param, tmp_path_factory.mktemp("states"), "t.db")


@pytest.fixture(scope="module")
def engine(db_url):
    from pandaflow.server.store.db import open_database

    engine = open_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def make_job(workload, engine):
    def make(status: str, **columns) -> int:
        (job_id,) = workload.submit([{"memory_mb": 100}])
        with engine.begin() as conn:
            conn.execute(
                update(s.jobs).where(s.jobs.c.id == job_id).values(status=status, **{**WORN, **columns})
            )
        return job_id

    return make


def row(engine, job_id: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(s.jobs).where(s.jobs.c.id == job_id)).mappings().one())


def events(engine, job_id: int) -> list[dict]:
    with engine.connect() as conn:
        return states.history(conn, job_id)


def apply(engine, event: str, job_id: int, **kwargs) -> states.Applied:
    with engine.begin() as conn:
        current = row(engine, job_id)
        return states.apply(conn, event, [current], NOW, **{**GIVEN.get(event, {}), **kwargs})


PAIRS = list(itertools.product(states.ALL_STATES, states.EVENTS))


@pytest.mark.parametrize("status,event", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_every_state_and_event_pair_is_legal_or_refused_by_the_table(make_job, engine, status, event):
    job_id = make_job(status)
    before = row(engine, job_id)
    spec = states.TRANSITIONS[event]
    if status in spec.sources:
        applied = apply(engine, event, job_id)
        after = row(engine, job_id)
        assert applied.ids == [job_id]
        assert after["status"] == spec.target
        assert after["updated_at"] == NOW
        changed = {c for c in after if after[c] != before[c]} - {"status", "updated_at"}
        assert changed <= spec.writes, f"{event} wrote columns it does not own: {changed - spec.writes}"
        (logged,) = events(engine, job_id)
        assert (logged["from_status"], logged["to_status"], logged["event"]) == (status, spec.target, event)
        assert logged["at"] == NOW
    else:
        with pytest.raises(IllegalTransition, match=f"'{status}' -> '{spec.target}'"):
            apply(engine, event, job_id)
        assert row(engine, job_id) == before
        assert events(engine, job_id) == []


@pytest.mark.parametrize("event", states.EVENTS)
def test_an_illegal_job_can_be_skipped_instead_of_raising(make_job, engine, event):
    spec = states.TRANSITIONS[event]
    illegal = next(st for st in states.ALL_STATES if st not in spec.sources)
    job_id = make_job(illegal)
    with engine.begin() as conn:
        applied = states.apply(conn, event, [row(engine, job_id)], NOW, strict=False, **GIVEN.get(event, {}))
    assert applied.moved == [] and [r["id"] for r in applied.skipped] == [job_id]
    assert row(engine, job_id)["status"] == illegal


def test_dispatch_counts_the_attempt_and_records_the_pilot(make_job, engine):
    job_id = make_job("ready", attempt=1, max_attempts=3)
    applied = apply(engine, "dispatch", job_id)
    after = row(engine, job_id)
    assert (after["attempt"], after["pilot_id"], after["dispatched_at"]) == (2, 7, NOW)
    assert after["started_at"] is None and after["ended_at"] is None
    assert applied.moved[0]["attempt"] == 2
    assert events(engine, job_id)[0]["attempt"] == 2 and events(engine, job_id)[0]["pilot_id"] == 7


def test_a_job_given_back_unstarted_gets_its_attempt_back(make_job, engine):
    job_id = make_job("dispatched", attempt=2, max_attempts=3, started_at=None, ended_at=None)
    apply(engine, "return", job_id, reason="its pilot was lost before starting it")
    after = row(engine, job_id)
    assert (after["status"], after["attempt"], after["pilot_id"], after["dispatched_at"]) == (
        "ready",
        1,
        None,
        None,
    )
    (logged,) = events(engine, job_id)
    assert logged["reason"] == "its pilot was lost before starting it" and logged["pilot_id"] == 5


def test_a_failed_attempt_with_attempts_left_goes_back_to_ready_without_a_pilot(make_job, engine):
    job_id = make_job("running", attempt=1, max_attempts=3)
    apply(engine, "retry", job_id)
    after = row(engine, job_id)
    assert (after["status"], after["pilot_id"], after["worker_id"]) == ("ready", None, None)
    assert (after["error_code"], after["memory_mb"], after["queue"]) == (1201, 300, "big")
    assert after["started_at"] is None and after["ended_at"] is None


@pytest.mark.parametrize(
    "event,status",
    [
        ("resubmit", "failed"),
        ("resubmit", "cancelled"),
        ("revive", "pruned"),
        ("rerun", "finished"),
        ("rerun", "failed"),
    ],
)
def test_starting_over_clears_the_last_attempt_and_grants_attempts(make_job, engine, event, status):
    job_id = make_job(status)
    apply(engine, event, job_id, extra_attempts=2)
    after = row(engine, job_id)
    assert after["status"] == "pending"
    for column in (
        "pilot_id",
        "worker_id",
        "exit_code",
        "dispatched_at",
        "started_at",
        "ended_at",
        "max_rss_mb",
        "max_pss_mb",
    ):
        assert after[column] is None, column
    assert (after["error_code"], after["error_diag"], after["stdout_tail"]) == (0, "", "")
    assert after["attempt"] == 1 and after["max_attempts"] == 3  # attempt 1 used, 2 more granted


def test_a_grant_never_shrinks_the_budget(make_job, engine):
    job_id = make_job("pruned", attempt=0, max_attempts=5)
    apply(engine, "revive", job_id, extra_attempts=1)
    assert row(engine, job_id)["max_attempts"] == 5


def test_an_event_refuses_columns_it_does_not_own(make_job, engine):
    job_id = make_job("pending")
    with pytest.raises(ValueError, match="does not own"):
        apply(engine, "release", job_id, pilot_id=3)


def test_a_row_that_moved_since_it_was_read_rolls_the_change_back(make_job, engine):
    job_id = make_job("ready")
    stale = row(engine, job_id)
    with engine.begin() as conn:
        conn.execute(update(s.jobs).where(s.jobs.c.id == job_id).values(status="held"))
    with pytest.raises(states.StaleState), engine.begin() as conn:
        states.apply(conn, "dispatch", [stale], NOW, pilot_id=1)
    assert row(engine, job_id)["status"] == "held"
    assert events(engine, job_id) == []


def test_per_job_values_are_written_per_job(make_job, engine):
    a, b = make_job("running"), make_job("running")
    with engine.begin() as conn:
        rows = [row(engine, a), row(engine, b)]
        each = {
            a: {**GIVEN["finish"], "exit_code": 0},
            b: {**GIVEN["finish"], "exit_code": 0, "stdout_tail": "bee"},
        }
        states.apply(conn, "finish", rows, NOW, each=each, reason={b: "second"})
    assert row(engine, a)["stdout_tail"] == "t" and row(engine, b)["stdout_tail"] == "bee"
    assert events(engine, b)[0]["reason"] == "second" and events(engine, a)[0]["reason"] == ""


def test_effects_name_clients_queues_and_pilots_to_kill(make_job, engine):
    job_id = make_job("running", client="c1")
    fx = states.Effects()
    with engine.begin() as conn:
        states.apply(conn, "cancel", [row(engine, job_id)], NOW, effects=fx, **GIVEN["cancel"])
    assert fx.kill == {5: [job_id]}
    (entry,) = fx.notify["c1"]
    assert entry.status == "cancelled" and entry.error_code == 1400
    ready = make_job("dispatched", started_at=None)
    fx = states.Effects()
    with engine.begin() as conn:
        states.apply(conn, "return", [row(engine, ready)], NOW, effects=fx)
    assert fx.queues == {"small"}


def test_final_states_have_no_way_out_except_back_to_waiting():
    for event, spec in states.TRANSITIONS.items():
        if spec.sources & states.FINAL_STATES:
            assert spec.target == states.PENDING, event


def test_held_jobs_are_neither_dispatched_nor_pruned():
    assert not states.allowed(states.HELD, "dispatch")
    assert not states.allowed(states.HELD, "prune")


def test_every_state_has_panda_and_bps_names():
    assert set(states.EXTERNAL_NAMES) == set(states.ALL_STATES)
    assert states.EXTERNAL_NAMES["pruned"][1] == "PRUNED"


def test_every_state_is_reachable_and_every_non_final_state_can_end():
    reachable = {spec.target for spec in states.TRANSITIONS.values()} | {states.PENDING, states.READY}
    assert reachable == set(states.ALL_STATES)
    for status in set(states.ALL_STATES) - states.FINAL_STATES:
        assert states.allowed(status, "cancel"), status
