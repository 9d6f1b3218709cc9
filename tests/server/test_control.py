"""Hold and release, and what a user retry leaves on the jobs it revives (on both databases)."""

import pytest
from sqlalchemy import select
from support.databases import BOTH, database_url

from pandaflow.server.dispatch import assignment
from pandaflow.server.jobs import control, states
from pandaflow.server.store import schema as s


@pytest.fixture(params=BOTH)
def db_url(request, tmp_path):
    yield from database_url(request.param, tmp_path, "t.db")


def act(engine, action, **what):
    with engine.begin() as conn:
        return getattr(control, action)(conn, 5.0, **what)


def job(engine, job_id):
    with engine.connect() as conn:
        return dict(conn.execute(select(s.jobs).where(s.jobs.c.id == job_id)).mappings().one())


def workflow_of(engine, job_id):
    return job(engine, job_id)["workflow_id"]


def chain(workload):
    """a -> b -> c."""
    return workload.submit(
        [{"name": "a", "outputs": ["x"], "max_attempts": 1}, {"name": "b", "inputs": ["x"], "outputs": ["y"]},
         {"name": "c", "inputs": ["y"], "task": "late"}]
    )  # fmt: skip


def test_held_jobs_are_not_dispatched(workload, engine):
    ready, other = workload.submit([{"name": "r"}, {"name": "o"}])
    changed = act(engine, "hold", job_ids=[ready])
    assert changed.job_ids == [ready]
    assert workload.dispatch(workload.pilot()) == [other]
    assert workload.status(ready) == "held"


def test_release_puts_a_ready_job_back_in_its_queue(workload, engine):
    (ready,) = workload.submit([{"name": "r"}])
    act(engine, "hold", job_ids=[ready])
    changed = act(engine, "release", job_ids=[ready])
    assert changed.job_ids == [ready] and changed.queues == {"small"}
    assert workload.status(ready) == "ready"
    assert workload.dispatch(workload.pilot()) == [ready]


def test_a_held_job_whose_inputs_arrive_stays_held_then_is_released_ready(workload, engine):
    a, b, c = chain(workload)
    act(engine, "hold", job_ids=[b])
    workload.run(workload.pilot(), a)
    assert workload.status(b) == "held"
    act(engine, "release", job_ids=[b])
    assert workload.status(b) == "ready"


def test_a_held_job_still_waiting_is_released_pending(workload, engine):
    a, b, c = chain(workload)
    act(engine, "hold", job_ids=[c])
    act(engine, "release", job_ids=[c])
    assert workload.status(c) == "pending"


def test_a_held_job_is_not_pruned_but_is_when_released_with_an_input_gone(workload, engine):
    a, b, c = chain(workload)
    act(engine, "hold", job_ids=[b])
    workload.run(workload.pilot(), a, ok=False)
    assert workload.statuses([a, b, c]) == ["failed", "held", "pending"]
    act(engine, "release", job_ids=[b])
    assert workload.statuses([b, c]) == ["pruned", "pruned"]


def test_hold_a_task_of_a_workflow(workload, engine):
    a, b, c = chain(workload)
    changed = act(engine, "hold", workflow_id=workflow_of(engine, a), task="late")
    assert changed.job_ids == [c]
    assert workload.statuses([a, b, c]) == ["ready", "pending", "held"]


def test_hold_says_why_it_leaves_jobs_alone(workload, engine):
    running, done = workload.submit([{"name": "r"}, {"name": "d"}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    workload.report(done)
    (waiting,) = workload.submit([{"name": "w"}])
    act(engine, "hold", job_ids=[waiting])
    changed = act(engine, "hold", job_ids=[running, done, waiting])
    assert changed.job_ids == []
    reasons = {item["id"]: item["reason"] for item in changed.skipped}
    assert "runs to its end" in reasons[running]
    assert reasons[done] == "already ended" and reasons[waiting] == "already held"


def test_a_task_that_does_not_exist_is_refused_by_name(workload, engine):
    (a,) = workload.submit([{"name": "a"}])
    with pytest.raises(control.ControlError, match="no task 'nope'; its tasks: \\['default'\\]"):
        act(engine, "hold", workflow_id=workflow_of(engine, a), task="nope")


def test_a_reserved_job_that_is_held_loses_its_reservation(workload, engine):
    (r,) = workload.submit([{"name": "r"}])
    with engine.begin() as conn:
        conn.execute(s.jobs.update().where(s.jobs.c.id == r).values(status="reserved", worker_id=3))
    act(engine, "hold", job_ids=[r])
    act(engine, "release", job_ids=[r])
    row = job(engine, r)
    assert (row["status"], row["worker_id"]) == ("ready", None)


def test_cancelled_jobs_and_their_downstream_are_notified_and_killed(workload, engine):
    (r,) = workload.submit([{"name": "r"}], client="exec-1")
    pilot = workload.pilot()
    workload.dispatch(pilot)
    changed = act(engine, "cancel", job_ids=[r])
    assert changed.kill == {pilot: [r]}
    assert [e.status for e in changed.notify["exec-1"]] == ["cancelled"]


def test_a_revived_always_job_keeps_nothing_of_its_last_run(workload, engine):
    """Regression: a DAG with a job that fails for good and an 'always' final job; after the run,
    retrying the workflow revived the final job with its old pilot, end time and spent budget."""
    bad, final = workload.submit(
        [{"name": "bad", "outputs": ["x"], "max_attempts": 1},
         {"name": "final", "inputs": ["x"], "always": True, "max_attempts": 1}]
    )  # fmt: skip
    pilot = workload.pilot()
    workload.run(pilot, bad, ok=False)
    workload.run(pilot, final, ok=False)
    assert workload.statuses([bad, final]) == ["failed", "failed"]
    changed = act(engine, "retry", workflow_id=workflow_of(engine, bad))
    assert set(changed.job_ids) == {bad, final}
    row = job(engine, final)
    assert row["status"] == "pending"
    for column in ("pilot_id", "ended_at", "started_at", "dispatched_at", "exit_code"):
        assert row[column] is None, column
    assert (row["error_code"], row["error_diag"], row["exit_code"]) == (0, "", None)
    assert row["attempt"] == 1 and row["max_attempts"] == 2
    workload.run(pilot, bad)
    workload.run(pilot, final)
    assert workload.statuses([bad, final]) == ["finished", "finished"]


def test_every_change_is_in_the_job_history(workload, engine):
    (r,) = workload.submit([{"name": "r", "max_attempts": 1}])
    act(engine, "hold", job_ids=[r])
    act(engine, "release", job_ids=[r])
    pilot = workload.pilot()
    workload.run(pilot, r, ok=False)
    act(engine, "retry", job_ids=[r])
    with engine.connect() as conn:
        history = states.history(conn, r)
    events = [(e["event"], e["from_status"], e["to_status"], e["attempt"]) for e in history]
    assert events == [
        ("hold", "ready", "held", 0), ("unhold", "held", "pending", 0), ("release", "pending", "ready", 0),
        ("dispatch", "ready", "dispatched", 1), ("fail", "dispatched", "failed", 1),
        ("resubmit", "failed", "pending", 1), ("release", "pending", "ready", 1),
    ]  # fmt: skip


def test_a_dispatched_job_given_back_is_ready_with_its_attempt_returned(workload, engine):
    from pandaflow.server.dispatch import completion

    (r,) = workload.submit([{"name": "r"}])
    pilot = workload.pilot()
    with engine.begin() as conn:
        assignment.assign(conn, pilot_id=pilot, queue="small", n=1, now=1.0)
    with engine.begin() as conn:
        done = completion.give_back(conn, completion.held_by(conn, pilot), 2.0, "testing")
    assert done.returned == 1 and done.requeued == {"small"}
    assert (job(engine, r)["status"], job(engine, r)["attempt"]) == ("ready", 0)


def test_a_job_given_back_too_often_spends_its_attempt(workload, engine):
    from pandaflow.server.dispatch import completion

    (r,) = workload.submit([{"name": "r", "max_attempts": 1}])
    pilot = workload.pilot()
    for _ in range(completion.MAX_RETURNS):
        workload.dispatch(pilot)
        with engine.begin() as conn:
            completion.give_back(conn, completion.held_by(conn, pilot), 2.0, "lost again")
    assert job(engine, r)["status"] == "ready"
    workload.dispatch(pilot)
    with engine.begin() as conn:
        completion.give_back(conn, completion.held_by(conn, pilot), 2.0, "lost again")
    row = job(engine, r)
    assert row["status"] == "failed" and "given back 5 times" in row["error_diag"]
