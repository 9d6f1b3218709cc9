"""Jobs that run whatever their inputs' outcome ('always', bps finalJob whenRun: ALWAYS), and
retries that undo what a failure did downstream (bps restart)."""

import pytest
from sqlalchemy import select
from support.databases import BOTH, database_url

from pandaflow.server.jobs import control
from pandaflow.server.store import schema as s

SMALL = "small"


@pytest.fixture(params=BOTH)
def db_url(request, tmp_path):
    """The set-based SQL of pruning and revival runs on both databases."""
    yield from database_url(request.param, tmp_path, "t.db")




def retry(engine, **what):
    with engine.begin() as conn:
        return control.retry(conn, 2.0, **what)


def diamond(workload):
    """a -> b -> c, with 'final' (always) after c and after an independent job."""
    return workload.submit(
        [{"name": "a", "outputs": ["x"], "max_attempts": 1}, {"name": "b", "inputs": ["x"], "outputs": ["y"]},
         {"name": "c", "inputs": ["y"], "outputs": ["z"]}, {"name": "side", "outputs": ["w"]},
         {"name": "final", "inputs": ["z", "w"], "always": True}]
    )  # fmt: skip


def test_an_always_job_runs_after_its_inputs_succeeded(workload):
    a, b, c, side, final = diamond(workload)
    pilot = workload.pilot()
    for job in (a, side, b, c):
        workload.run(pilot, job)
    assert workload.status(final) == "ready"


def test_an_always_job_runs_after_a_failure_upstream_instead_of_being_pruned(workload):
    a, b, c, side, final = diamond(workload)
    pilot = workload.pilot()
    workload.run(pilot, a, ok=False)
    assert workload.statuses([b, c]) == ["pruned", "pruned"]
    assert workload.status(final) == "pending"  # 'side' has not ended yet
    workload.run(pilot, side)
    assert workload.status(final) == "ready"


def test_an_always_job_is_cancelled_with_its_workflow(workload, engine):
    *_, final = diamond(workload)
    with engine.begin() as conn:
        wid = conn.execute(select(s.jobs.c.workflow_id).where(s.jobs.c.id == final)).scalar()
        control.cancel(conn, 1.0, workflow_id=wid)
    assert workload.status(final) == "cancelled"


def test_retrying_a_failed_job_revives_what_it_pruned(workload, engine):
    a, b, c, side, final = diamond(workload)
    pilot = workload.pilot()
    workload.run(pilot, a, ok=False)
    changed = retry(engine, job_ids=[a])
    assert set(changed.job_ids) == {a, b, c}
    assert workload.statuses([a, b, c]) == ["ready", "pending", "pending"]
    workload.run(pilot, a)
    workload.run(pilot, b)
    workload.run(pilot, c)
    workload.run(pilot, side)
    assert workload.status(final) == "ready"


def test_a_pruned_job_with_another_missing_input_stays_pruned(workload, engine):
    a, other, both = workload.submit(
        [{"name": "a", "outputs": ["x"], "max_attempts": 1},
         {"name": "other", "outputs": ["y"], "max_attempts": 1}, {"name": "both", "inputs": ["x", "y"]}]
    )  # fmt: skip
    pilot = workload.pilot()
    workload.run(pilot, a, ok=False)
    workload.run(pilot, other, ok=False)
    retry(engine, job_ids=[a])
    assert workload.statuses([a, both]) == ["ready", "pruned"]
    retry(engine, job_ids=[other])
    assert workload.status(both) == "pending"


def test_an_always_job_that_ran_after_a_failure_runs_again_after_the_restart(workload, engine):
    a, b, c, side, final = diamond(workload)
    pilot = workload.pilot()
    workload.run(pilot, a, ok=False)
    workload.run(pilot, side)
    workload.run(pilot, final)
    assert workload.status(final) == "finished"
    with engine.begin() as conn:
        wid = conn.execute(select(s.jobs.c.workflow_id).where(s.jobs.c.id == a)).scalar()
    retry(engine, workflow_id=wid)
    assert workload.statuses([a, b, c, side, final]) == ["ready", "pending", "pending", "finished", "pending"]
    for job in (a, b, c):
        workload.run(pilot, job)
    assert workload.status(final) == "ready"


def test_a_restart_after_cancelling_the_workflow_keeps_the_order_of_the_graph(workload, engine):
    a, b, c, side, final = diamond(workload)
    with engine.begin() as conn:
        wid = conn.execute(select(s.jobs.c.workflow_id).where(s.jobs.c.id == a)).scalar()
        control.cancel(conn, 1.0, workflow_id=wid)
    retry(engine, workflow_id=wid)
    # Only the roots may run; the others wait for their inputs again.
    assert workload.statuses([a, b, c, side, final]) == ["ready", "pending", "pending", "ready", "pending"]


def test_a_job_reading_a_product_that_went_missing_is_stored_pruned(workload, api):
    first = api.post("/api/v1/workflows", json={"name": "big", "jobs": [
        {"name": "a", "command": "false", "outputs": ["x"], "max_attempts": 1}]})  # fmt: skip
    wid = first.json["workflow_id"]
    pilot = workload.pilot()
    workload.run(pilot, first.json["job_ids"][next(iter(first.json["job_ids"]))], ok=False)
    second = api.post(f"/api/v1/workflows/{wid}/jobs", json={"jobs": [
        {"name": "b", "command": "true", "inputs": ["x"], "outputs": ["y"]},
        {"name": "c", "command": "true", "inputs": ["y"]},
        {"name": "final", "command": "true", "inputs": ["x"], "always": True}]})  # fmt: skip
    assert second.status_code == 201, second.json
    jobs = {j["name"]: j["status"] for j in api.get(f"/api/v1/jobs?workflow_id={wid}").json["jobs"]}
    assert jobs == {"a": "failed", "b": "pruned", "c": "pruned", "final": "ready"}


def test_always_must_be_a_boolean(api):
    reply = api.post("/api/v1/workflows", json={"name": "w", "jobs": [{"command": "true", "always": "yes"}]})
    assert reply.status_code == 400
    assert "jobs[0].always: expected true or false, got 'yes'" in reply.json["error"]


def test_a_piece_stored_while_its_producer_finishes_is_released(workload, engine, monkeypatch):
    """The dispatcher may finish a producer while a later piece that reads its output is being
    stored: whichever commits first, the consumer must not wait for ever."""
    import threading
    import time

    from pandaflow.server.jobs import dag
    from pandaflow.server.jobs.submission import WorkflowBook, store, validate

    (a,) = workload.submit([{"name": "a", "outputs": ["x"]}])
    pilot = workload.pilot()
    workload.dispatch(pilot, SMALL)
    with engine.connect() as conn:
        wid = conn.execute(select(s.jobs.c.workflow_id).where(s.jobs.c.id == a)).scalar()
    original = dag.existing_products
    finisher = threading.Thread(target=workload.report, args=(a,))

    def read_then_let_the_producer_finish(*args, **kwargs):
        found = original(*args, **kwargs)
        finisher.start()
        time.sleep(0.5)  # long enough for the completion to commit, unless it must wait for us
        return found

    monkeypatch.setattr(dag, "existing_products", read_then_let_the_producer_finish)
    clean = validate([{"name": "b", "command": "true", "inputs": ["x"]}], workload.broker)
    with engine.begin() as conn:
        stored = store(conn, clean, WorkflowBook(), workflow_id=wid)
    finisher.join(30)
    assert workload.status(a) == "finished"
    assert workload.status(stored.ids[clean[0]["uid"]]) == "ready"
