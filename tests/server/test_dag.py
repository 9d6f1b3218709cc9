"""Data-aware dependencies: release by available inputs, pruning, and graph checks."""

import pytest
from sqlalchemy import func, select

from pandaflow.server.jobs.submission import SubmissionError
from pandaflow.server.store import schema as s

SMALL = "small"




def test_a_job_waits_until_every_input_is_written(workload):
    a, b, c = workload.submit(
        [{"name": "a", "outputs": ["raw"]}, {"name": "b", "inputs": ["raw"], "outputs": ["calexp"]},
         {"name": "c", "inputs": ["calexp", "raw"]}]
    )  # fmt: skip
    assert workload.statuses([a, b, c]) == ["ready", "pending", "pending"]
    pilot = workload.pilot()
    workload.run(pilot, a)
    assert workload.statuses([b, c]) == ["ready", "pending"]
    workload.run(pilot, b)
    assert workload.status(c) == "ready"


def test_parents_are_dependencies_without_named_products(workload):
    p1, p2, child = workload.submit(
        [{"name": "p1"}, {"name": "p2"}, {"name": "merge", "parents": ["p1", "p2"]}]
    )
    pilot = workload.pilot()
    workload.run(pilot, p1)
    assert workload.status(child) == "pending"
    workload.run(pilot, p2)
    assert workload.status(child) == "ready"


def test_inputs_declared_available_do_not_hold_a_job(engine, queues):
    from pandaflow.server.jobs.broker import Broker
    from pandaflow.server.jobs.submission import WorkflowBook, store, validate

    clean = validate([{"name": "isr", "command": "true", "inputs": ["raw-1"]}], Broker(queues))
    with engine.begin() as conn:
        out = store(conn, clean, WorkflowBook(), workflow="w", available=["raw-1"])
    with engine.connect() as conn:
        status = conn.execute(select(s.jobs.c.status).where(s.jobs.c.id == out.ids[clean[0]["uid"]])).scalar()
    assert status == "ready" and out.queues == {SMALL}


def test_a_producer_that_fails_for_good_prunes_everything_downstream(workload):
    a, b, c, other = workload.submit(
        [{"name": "a", "outputs": ["x"], "max_attempts": 1}, {"name": "b", "inputs": ["x"], "outputs": ["y"]},
         {"name": "c", "inputs": ["y"]}, {"name": "independent"}]
    )  # fmt: skip
    pilot = workload.pilot()
    workload.run(pilot, a, ok=False)
    assert workload.statuses([a, b, c]) == ["failed", "pruned", "pruned"]
    assert workload.status(other) != "pruned"


def test_a_failed_attempt_that_will_be_retried_prunes_nothing(workload):
    a, b = workload.submit(
        [{"name": "a", "outputs": ["x"], "max_attempts": 2}, {"name": "b", "inputs": ["x"]}]
    )
    workload.run(workload.pilot(), a, ok=False)
    assert workload.statuses([a, b]) == ["ready", "pending"]


def test_cancelling_a_producer_prunes_its_consumers(workload, engine):
    from pandaflow.server.jobs import control

    a, b = workload.submit([{"name": "a", "outputs": ["x"]}, {"name": "b", "inputs": ["x"]}])
    with engine.begin() as conn:
        control.cancel(conn, 1.0, job_ids=[a])
    assert workload.statuses([a, b]) == ["cancelled", "pruned"]


@pytest.mark.parametrize(
    "jobs,message",
    [
        ([{"name": "a", "parents": ["b"]}, {"name": "b", "parents": ["a"]}], "cycle through jobs: 'a', 'b'"),
        ([{"name": "a", "inputs": ["y"], "outputs": ["x"]}, {"name": "b", "inputs": ["x"], "outputs": ["y"]}],
         "cycle"),
        ([{"name": "a", "outputs": ["x"]}, {"name": "a"}], "duplicate job name"),
        ([{"name": "a", "parents": ["nobody"]}], "unknown parent 'nobody'"),
        ([{"name": "a", "outputs": ["x"]}, {"name": "b", "outputs": ["x"]}], "written by two jobs"),
        ([{"name": "a", "inputs": ["ghost"]}], "input 'ghost' has no producer"),
        ([{"outputs": ["x"]}], "needs a name"),
    ],
    ids=["parent-cycle", "product-cycle", "duplicate-name", "unknown-parent", "two-writers", "no-producer",
         "unnamed"],
)  # fmt: skip
def test_an_unsound_graph_is_refused_whole_naming_the_jobs(workload, engine, jobs, message):
    with pytest.raises(SubmissionError, match=message):
        workload.submit([*jobs, {"name": "innocent"}])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.jobs)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(s.products)).scalar() == 0


def test_release_at_scale_is_one_indexed_pass(workload):
    """A fan-out of 2,000 consumers of one product is released by one finished job."""
    jobs = [{"name": "root", "outputs": ["calib"]}] + [
        {"name": f"q{i}", "inputs": ["calib"]} for i in range(2000)
    ]
    ids = workload.submit(jobs)
    workload.run(workload.pilot(), ids[0])
    assert set(workload.statuses(ids[1:])) == {"ready"}


def test_the_rest_api_accepts_a_dag_with_available_inputs(api):
    reply = api.post(
        "/api/v1/workflows",
        json={"name": "dag", "available": ["raw"], "jobs": [
            {"name": "isr", "command": "true", "inputs": ["raw"], "outputs": ["postISR"]},
            {"name": "calib", "command": "true", "inputs": ["postISR"]}]},
    )  # fmt: skip
    assert reply.status_code == 201, reply.json
    jobs = api.get("/api/v1/jobs").json["jobs"]
    assert {j["name"]: j["status"] for j in jobs} == {"isr": "ready", "calib": "pending"}


def test_the_rest_api_refuses_a_cycle_with_400(api):
    reply = api.post(
        "/api/v1/workflows",
        json={"name": "loop", "jobs": [{"name": "a", "command": "true", "parents": ["b"]},
                                       {"name": "b", "command": "true", "parents": ["a"]}]},
    )  # fmt: skip
    assert reply.status_code == 400 and "cycle" in reply.json["error"]


def test_a_product_declared_available_cannot_also_be_written(workload, engine):
    with pytest.raises(SubmissionError, match="declared available but job 'a' writes it"):
        from pandaflow.server.jobs.submission import WorkflowBook, store, validate

        clean = validate([{"name": "a", "command": "true", "outputs": ["raw"]}], workload.broker)
        with engine.begin() as conn:
            store(conn, clean, WorkflowBook(), workflow="w", available=["raw"])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.jobs)).scalar() == 0


def test_a_large_dag_can_be_sent_in_pieces_that_read_earlier_products(api):
    first = api.post("/api/v1/workflows", json={"name": "big", "available": ["raw"], "jobs": [
        {"name": "isr", "command": "true", "inputs": ["raw"], "outputs": ["postISR"]}]})  # fmt: skip
    wid = first.json["workflow_id"]
    second = api.post(f"/api/v1/workflows/{wid}/jobs", json={"jobs": [
        {"name": "calib", "command": "true", "inputs": ["postISR"], "outputs": ["calexp"]}]})  # fmt: skip
    assert second.status_code == 201, second.json
    jobs = {j["name"]: j["status"] for j in api.get(f"/api/v1/jobs?workflow_id={wid}").json["jobs"]}
    assert jobs == {"isr": "ready", "calib": "pending"}


def test_appending_to_a_missing_workflow_is_404(api):
    reply = api.post("/api/v1/workflows/999/jobs", json={"jobs": [{"command": "true"}]})
    assert reply.status_code == 404 and "no workflow 999" in reply.json["error"]


def test_a_later_piece_cannot_write_a_product_an_earlier_piece_writes(api):
    first = api.post("/api/v1/workflows", json={"name": "big", "jobs": [
        {"name": "isr", "command": "true", "outputs": ["postISR"]}]})  # fmt: skip
    wid = first.json["workflow_id"]
    second = api.post(f"/api/v1/workflows/{wid}/jobs", json={"jobs": [
        {"name": "isr-again", "command": "true", "outputs": ["postISR"]}]})  # fmt: skip
    assert second.status_code == 400
    assert "'postISR' already exists in this workflow" in second.json["error"]


def test_a_later_piece_reading_a_product_declared_available_earlier_is_ready(api):
    first = api.post("/api/v1/workflows", json={"name": "big", "available": ["raw"], "jobs": [
        {"name": "isr", "command": "true", "inputs": ["raw"]}]})  # fmt: skip
    wid = first.json["workflow_id"]
    second = api.post(f"/api/v1/workflows/{wid}/jobs", json={"jobs": [
        {"name": "isr-2", "command": "true", "inputs": ["raw"]}]})  # fmt: skip
    assert second.status_code == 201, second.json
    jobs = {j["name"]: j["status"] for j in api.get(f"/api/v1/jobs?workflow_id={wid}").json["jobs"]}
    assert jobs == {"isr": "ready", "isr-2": "ready"}
