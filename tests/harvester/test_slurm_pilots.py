"""Against a real single-node Slurm cluster (``scripts/slurm.sh``, started by ``scripts/test.sh``):
the harvester submits a pilot with sbatch, the pilot runs the jobs inside the Slurm job, and the
idle pilot is cancelled with scancel. A submission Slurm refuses is visible on its queue."""

import json
import os
import subprocess

import pytest
from support.lookups import rows
from support.servers import local_server
from support.waiting import wait_until

from pandaflow.client import Client
from pandaflow.server.store import schema as s

TOKEN = "slurm-token"


@pytest.fixture(autouse=True)
def slurm_cluster():
    """Skip without a test cluster; with ``PANDAFLOW_TEST_SLURM_REQUIRED=1`` (CI) fail instead."""
    if os.environ.get("PANDAFLOW_TEST_SLURM") != "1" or not os.environ.get("SLURM_CONF"):
        message = (
            "no test Slurm cluster: run scripts/slurm.sh and export what it prints (scripts/test.sh does)"
        )
        if os.environ.get("PANDAFLOW_TEST_SLURM_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    assert state.returncode == 0 and state.stdout.split()[0].startswith(("idle", "mixed")), (
        f"the test Slurm cluster is not usable: {state.stdout} {state.stderr}"
    )


def start_server(tmp_path, **queue):
    queues = tmp_path / "queues.json"
    entry = {
        "name": "slurm",
        "cores": 1,
        "max_memory_mb": 1000,
        "provider": {"name": "slurm", "exclusive": False, "walltime": "00:10:00"},
        "max_workers": 1,
        "worker_idle_s": 1.5,
        "arrival_timeout_s": 120,
        **queue,
    }
    queues.write_text(json.dumps({"queues": [entry]}))
    return local_server(
        f"sqlite:///{tmp_path / 'server.db'}",
        TOKEN,
        queues_file=str(queues),
        heartbeat_interval=0.5,
        heartbeat_timeout=10.0,
        harvester=True,
        harvester_interval=0.25,
        harvester_workdir=str(tmp_path / "harvester"),
    )


def squeue_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%t"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


def test_a_pilot_goes_in_with_sbatch_runs_the_jobs_and_is_cancelled_with_scancel(tmp_path, process_tag):
    server = start_server(tmp_path)
    try:
        jobs = [
            {"name": f"s{i}", "command": "echo slurm job $SLURM_JOB_ID", "queue": "slurm"} for i in range(3)
        ]
        Client(server.url, TOKEN).submit("slurm-e2e", jobs)
        done = wait_until(
            lambda: (
                (found := rows(server, s.jobs)) and all(j["status"] == "finished" for j in found) and found
            ),
            90,
            "the jobs to finish on the Slurm pilot",
            interval=0.1,
        )
        (worker,) = rows(server, s.workers)
        slurm_id = worker["provider_job_id"]
        assert worker["provider"] == "slurm" and slurm_id.isdigit() and worker["pilot_id"] is not None
        # The payloads ran inside that very Slurm job.
        assert {j["stdout_tail"].strip() for j in done} == {f"slurm job {slurm_id}"}
        (script,) = [
            p
            for p in (tmp_path / "harvester" / "scripts" / "slurm").iterdir()
            if p.suffix not in (".stdout", ".stderr")
        ]
        assert "#SBATCH --mem=1g" in script.read_text() and "--worker-id" in script.read_text()
        # Idle: the harvester cancels it with scancel; Slurm drops the job and the pilot leaves.
        wait_until(lambda: rows(server, s.workers)[0]["state"] == "cancelled", 60, "scale-in", interval=0.1)
        wait_until(lambda: squeue_state(slurm_id) in ("", "CA"), 30, "Slurm to end the job", interval=0.1)
        wait_until(
            lambda: rows(server, s.pilots)[0]["status"] == "exited", 30, "the pilot to exit", interval=0.1
        )
    finally:
        server.stop()


def test_a_submission_slurm_refuses_fails_its_worker_and_shows_on_the_queue(tmp_path):
    server = start_server(tmp_path, provider={"name": "slurm", "partition": "no_such_partition"})
    try:
        Client(server.url, TOKEN).submit("refused", [{"command": "true", "queue": "slurm"}])
        worker = wait_until(lambda: rows(server, s.workers), 30, "a submission attempt", interval=0.1)[0]
        wait_until(lambda: rows(server, s.workers)[0]["state"] == "failed", 30, "the failure", interval=0.1)
        worker = rows(server, s.workers)[0]
        assert "invalid partition" in worker["error"].lower()
        status = wait_until(
            lambda: [q for q in rows(server, s.harvester_queues) if q["error"]],
            30,
            "queue error",
            interval=0.1,
        )
        assert "invalid partition" in status[0]["error"].lower()
        assert "slurm" in server.harvester.errors
    finally:
        server.stop()


def test_on_a_push_queue_the_slurm_pilot_runs_the_job_reserved_for_its_worker(tmp_path, process_tag):
    server = start_server(tmp_path, mode="push")
    try:
        Client(server.url, TOKEN).submit(
            "slurm-push", [{"command": "echo pushed in $SLURM_JOB_ID", "queue": "slurm"}]
        )
        (job,) = wait_until(
            lambda: [j for j in rows(server, s.jobs) if j["status"] == "finished"],
            90,
            "the job to finish",
            interval=0.1,
        )
        (worker,) = rows(server, s.workers)
        assert job["worker_id"] == worker["id"] and job["pilot_id"] == worker["pilot_id"] is not None
        assert job["stdout_tail"].strip() == f"pushed in {worker['provider_job_id']}"
        wait_until(lambda: rows(server, s.workers)[0]["state"] == "cancelled", 60, "scale-in", interval=0.1)
    finally:
        server.stop()
