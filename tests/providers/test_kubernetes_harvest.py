"""The harvester driving KubernetesProvider against the fake API server: a queue with ready jobs
gets a pilot Job sized from the queue, and the worker row follows what the cluster reports."""

import time

import pytest
from sqlalchemy import select

from pandaflow.harvester import Harvester, HarvesterConfig
from pandaflow.harvester import workers as w
from pandaflow.server.app import sync_queues
from pandaflow.server.jobs import pilots, submission
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.jobs.queues import parse_queues
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database


@pytest.fixture
def engine(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'h.db'}")
    yield engine
    engine.dispose()


def idf_harvester(engine, tmp_path, kubeconfig, **queue_keys):
    queue = {
        "name": "GOOGLE_IDF_HIMEM", "site": "Google_IDF", "min_memory_mb": 14336, "max_memory_mb": 40960,
        "cores": 1, "max_workers": 3, "worker_memory_mb": 40960, "preemptible": True,
        "provider": {"name": "kubernetes", "image": "pilot:1", "kubeconfig": kubeconfig,
                     "secret": "pandaflow-token", "node_selector": {"cloud.google.com/gke-spot": "true"}},
        **queue_keys,
    }  # fmt: skip
    queues = parse_queues([queue], "test")
    sync_queues(engine, queues)
    jobs = [{"command": "true", "queue": "GOOGLE_IDF_HIMEM", "memory_mb": 20000}]
    with engine.begin() as conn:
        submission.store(
            conn, submission.validate(jobs, Broker(queues)), submission.WorkflowBook(), workflow="wf"
        )
    cfg = HarvesterConfig(
        zmq_endpoint="tcp://pandaflow-server:8801", token="tok", workdir=str(tmp_path / "h"), name="h1",
        queues=queues, interval=0.05, python="python3",
    )  # fmt: skip
    return Harvester(engine, cfg)


def worker(engine):
    """The first worker (a failed one is replaced by a new submission in the same cycle)."""
    with engine.connect() as conn:
        return conn.execute(select(s.workers).order_by(s.workers.c.id)).mappings().first()


def test_ready_work_becomes_a_pilot_job_sized_from_the_queue(engine, tmp_path, kube_api, kubeconfig):
    harvester = idf_harvester(engine, tmp_path, kubeconfig)
    report = harvester.cycle()["GOOGLE_IDF_HIMEM"]
    assert report.errors == [] and len(report.submitted) == 1
    row = worker(engine)
    (job,) = kube_api.names("Job")
    assert (row["state"], row["provider"], row["provider_job_id"]) == (w.SUBMITTED, "kubernetes", job)
    assert job.startswith(f"pandaflow-google-idf-himem-{row['id']}-")
    spec = kube_api.get("Job", job)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "40Gi"}
    assert spec["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    command = container["command"][2]
    assert command.startswith("python3 -m pandaflow.pilot --zmq tcp://pandaflow-server:8801")
    assert "--queue GOOGLE_IDF_HIMEM --cores 1 --memory 40960 --token-file" in command
    assert f"--worker-id {row['id']}" in command


def test_a_job_that_runs_then_fails_without_a_pilot_is_missing(engine, tmp_path, kube_api, kubeconfig):
    harvester = idf_harvester(engine, tmp_path, kubeconfig)
    harvester.cycle()
    (job,) = kube_api.names("Job")
    pod = kube_api.start_pod(job, phase="Running")
    harvester.cycle()
    assert (worker(engine)["state"], worker(engine)["batch_state"]) == (w.RUNNING, "RUNNING")
    kube_api.set_pod(pod, phase="Failed", containerStatuses=[
        {"name": "pilot", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}])  # fmt: skip
    kube_api.set_job_condition(
        job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    )
    harvester.cycle()
    row = worker(engine)
    assert (row["state"], row["batch_state"]) == (w.MISSING, "FAILED")
    assert row["error"] == (
        f"the kubernetes job {job} ended (failed with exit code 1 (BackoffLimitExceeded: Job has reached the "
        "specified backoff limit: Error)) before its pilot registered"
    )


def test_a_job_that_fails_after_its_pilot_registered_fails_the_worker(engine, tmp_path, kube_api, kubeconfig):
    harvester = idf_harvester(engine, tmp_path, kubeconfig)
    harvester.cycle()
    (job,) = kube_api.names("Job")
    pod = kube_api.start_pod(job, phase="Running")
    row = worker(engine)
    with engine.begin() as conn:
        hello = {"pilot": "p1", "queue": "GOOGLE_IDF_HIMEM", "cores": 1, "worker_id": row["id"]}
        pilots.register(conn, hello, time.time())
    harvester.cycle()
    assert worker(engine)["state"] == w.RUNNING
    kube_api.set_pod(pod, phase="Failed", reason="NodeShutdown", message="node preempted")
    kube_api.set_job_condition(job, "Failed", "PodFailurePolicy", "")
    harvester.cycle()
    row = worker(engine)
    assert (row["state"], row["batch_state"]) == (w.FAILED, "FAILED")
    assert "NodeShutdown node preempted" in row["error"]


def test_idle_workers_are_scaled_in_by_deleting_their_job(engine, tmp_path, kube_api, kubeconfig):
    harvester = idf_harvester(engine, tmp_path, kubeconfig, worker_idle_s=0.01)
    harvester.cycle()
    (job,) = kube_api.names("Job")
    with engine.begin() as conn:  # the work went elsewhere; the queue is quiet
        conn.execute(s.jobs.delete())
    time.sleep(0.05)
    report = harvester.cycle()["GOOGLE_IDF_HIMEM"]
    assert report.cancelled == [worker(engine)["id"]] and worker(engine)["state"] == w.CANCELLED
    assert [(r.method, r.path) for r in kube_api.calls("DELETE")] == [
        ("DELETE", f"/apis/batch/v1/namespaces/pilots/jobs/{job}")
    ]
    assert kube_api.names("Job") == []


def test_an_api_refusal_fails_the_worker_and_stays_with_the_queue(engine, tmp_path, kube_api, kubeconfig):
    harvester = idf_harvester(engine, tmp_path, kubeconfig)
    kube_api.fail_next(
        "POST", "/apis/batch/v1", 403, "Forbidden", 'jobs.batch is forbidden: User "x" cannot create'
    )
    report = harvester.cycle()["GOOGLE_IDF_HIMEM"]
    row = worker(engine)
    assert row["state"] == w.FAILED
    assert row["error"].startswith(
        "submit failed: KubernetesApiError: POST /apis/batch/v1/namespaces/pilots/jobs: "
        "HTTP 403 Forbidden: jobs.batch is forbidden"
    )
    assert report.errors and harvester.errors["GOOGLE_IDF_HIMEM"].startswith(
        f"worker {row['id']}: submit failed"
    )
