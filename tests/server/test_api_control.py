"""REST: hold and release (by ids, workflow or task), control by task, and job timelines."""

from sqlalchemy import select

from pandaflow.server.store import schema as s

PREFIX = "/api/v1"


def workflow_of(engine, job_id):
    with engine.connect() as conn:
        return conn.execute(select(s.jobs.c.workflow_id).where(s.jobs.c.id == job_id)).scalar_one()


def test_hold_and_release_jobs_by_id(api, workload, dispatcher):
    (job,) = workload.submit([{"name": "a"}])
    reply = api.post(f"{PREFIX}/jobs/hold", json={"ids": [job]})
    assert reply.status_code == 200 and reply.get_json()["changed"] == [job]
    assert workload.status(job) == "held"
    reply = api.post(f"{PREFIX}/jobs/release", json={"ids": [job]})
    assert reply.get_json() == {"action": "release", "changed": [job], "skipped": []}
    assert workload.status(job) == "ready"
    assert dispatcher.of_kind("ready")[-1] == {"kind": "ready", "queues": ["small"]}


def test_hold_a_task_of_a_workflow(api, workload, engine):
    a, b = workload.submit([{"name": "a", "task": "isr"}, {"name": "b", "task": "calibrate"}])
    workflow = workflow_of(engine, a)
    reply = api.post(f"{PREFIX}/workflows/{workflow}/hold", json={"task": "isr"})
    assert reply.get_json()["changed"] == [a]
    assert workload.statuses([a, b]) == ["held", "ready"]
    reply = api.post(f"{PREFIX}/workflows/{workflow}/release")
    assert reply.get_json()["changed"] == [a]
    assert [x["reason"] for x in reply.get_json()["skipped"]] == ["not held"]


def test_an_unknown_task_is_refused_with_the_tasks_there_are(api, workload, engine):
    (a,) = workload.submit([{"name": "a", "task": "isr"}])
    reply = api.post(f"{PREFIX}/workflows/{workflow_of(engine, a)}/cancel", json={"task": "nope"})
    assert reply.status_code == 404
    assert "no task 'nope'; its tasks: ['isr']; nothing was changed" in reply.get_json()["error"]
    assert workload.status(a) == "ready"


def test_a_task_must_be_a_name(api, workload, engine):
    (a,) = workload.submit([{"name": "a"}])
    reply = api.post(f"{PREFIX}/workflows/{workflow_of(engine, a)}/hold", json={"task": 3})
    assert reply.status_code == 400 and "task: expected a non-empty string" in reply.get_json()["error"]


def test_holding_unknown_jobs_is_a_404(api):
    reply = api.post(f"{PREFIX}/jobs/hold", json={"ids": [999]})
    assert reply.status_code == 404 and "no such job(s): [999]" in reply.get_json()["error"]


def test_a_job_timeline_starts_with_its_submission(api, workload):
    (job,) = workload.submit([{"name": "a", "max_attempts": 1}])
    pilot = workload.pilot("pilot-t")
    workload.run(pilot, job, ok=False)
    timeline = api.get(f"{PREFIX}/jobs/{job}/events").get_json()
    assert timeline["job_id"] == job and timeline["status"] == "failed"
    steps = [(e["event"], e["from"], e["to"], e["attempt"], e["pilot"]) for e in timeline["events"]]
    assert steps == [
        ("submit", None, "ready", 0, None),
        ("dispatch", "ready", "dispatched", 1, "pilot-t"),
        ("fail", "dispatched", "failed", 1, "pilot-t"),
    ]
    assert timeline["events"][2]["reason"].startswith("error 1002")


def test_the_timeline_of_an_unknown_job_is_a_404(api):
    reply = api.get(f"{PREFIX}/jobs/12345/events")
    assert reply.status_code == 404 and "no job 12345" in reply.get_json()["error"]
