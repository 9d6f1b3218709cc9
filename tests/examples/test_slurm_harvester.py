"""``examples/slurm_harvester/run.py`` against a real single-node Slurm cluster (``scripts/slurm.sh``,
started by ``scripts/test.sh``), run as a user runs it: the harvester's pilots go in with sbatch, run
the parsl workflow inside their Slurm jobs and are cancelled with scancel once idle. The tests read
what it printed, the server database it left, Slurm, and the processes left (none)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from support.lookups import rows

from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "slurm_harvester"
LIVE = "pending,running,suspended,completing,configuring,requeued,resizing,signaling"


@pytest.fixture(scope="module")
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


def run_example(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def run(slurm_cluster, tmp_path_factory):
    """One run of the example: (completed process, its work directory, the database it left)."""
    workdir = tmp_path_factory.mktemp("slurm-harvester")
    done = run_example("--workdir", str(workdir))
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    engine = open_database(f"sqlite:///{workdir / 'server.db'}")
    yield done, workdir, engine
    engine.dispose()


@pytest.mark.slow
def test_the_harvester_submitted_pilots_with_sbatch_and_each_registered(run):
    done, workdir, engine = run
    workers = rows(engine, s.workers)
    assert 1 <= len(workers) <= 2  # the queue's max_workers
    for worker in workers:
        assert worker["provider"] == "slurm" and worker["provider_job_id"].isdigit()
        assert f"worker {worker['id']}: Slurm job {worker['provider_job_id']}, " in done.stdout
    # a second pilot may still wait for a CPU when the first has run everything (a 1-CPU node)
    assert any(worker["pilot_id"] is not None for worker in workers)
    where = workdir / "harvester" / "scripts" / "slurm_debug"
    scripts = [p.read_text() for p in where.iterdir() if p.suffix not in (".stdout", ".stderr")]
    assert len(scripts) == len(workers)
    for worker in workers:  # one sbatch script per worker, its pilot tied to the worker's row
        (script,) = [text for text in scripts if f"--worker-id {worker['id']} " in text]
        assert "#SBATCH --partition=debug" in script and "-m pandaflow.pilot" in script


@pytest.mark.slow
def test_every_job_ran_inside_a_slurm_job_of_the_harvester_and_returned_its_square(run):
    done, _, engine = run
    workers = {w["pilot_id"]: w["provider_job_id"] for w in rows(engine, s.workers)}
    jobs = rows(engine, s.jobs)
    assert [j["status"] for j in jobs] == ["finished"] * 4
    assert {j["pilot_id"] for j in jobs} <= set(workers)
    printed = re.findall(r"^  square\((\d+)\) = (\d+), run in Slurm job (\d+) on ", done.stdout, re.M)
    assert {int(x): int(square) for x, square, _ in printed} == {1: 1, 2: 4, 3: 9, 4: 16}
    assert {slurm_job for _, _, slurm_job in printed} <= set(workers.values())


@pytest.mark.slow
def test_the_idle_pilots_were_cancelled_and_nothing_is_left_behind(run):
    done, workdir, engine = run
    workers = rows(engine, s.workers)
    assert {w["state"] for w in workers} == {"cancelled"} and all(w["ended_at"] for w in workers)
    assert "scaled in" in workers[0]["error"]
    ids = ",".join(w["provider_job_id"] for w in workers)
    left = subprocess.run(["squeue", "-h", "-o", "%i", "-t", LIVE, "-j", ids], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    assert f"squeue: none of Slurm jobs {ids.replace(',', ', ')} is left" in done.stdout
    assert {p["status"] for p in rows(engine, s.pilots)} == {"exited"}
    ours = [p for p in psutil.process_iter(["cmdline"]) if str(workdir) in " ".join(p.info["cmdline"] or [])]
    assert ours == []


def test_a_queue_file_with_a_mistake_is_refused_with_where_it_is(tmp_path):
    queues = json.loads((EXAMPLE / "queues.json").read_text())
    queues["queues"][0]["provider"]["partiton"] = queues["queues"][0]["provider"].pop("partition")
    (tmp_path / "typo.json").write_text(json.dumps(queues))
    done = run_example("--queues", str(tmp_path / "typo.json"), "--workdir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"Error: {tmp_path / 'typo.json'}: queues[0].provider.partiton: unknown key for provider 'slurm'"
    )
    assert not (tmp_path / "run").exists()


def test_a_partition_slurm_does_not_have_is_refused_before_the_server_starts(slurm_cluster, tmp_path):
    queues = json.loads((EXAMPLE / "queues.json").read_text())
    queues["queues"][0]["provider"]["partition"] = "no_such_partition"
    (tmp_path / "queues.json").write_text(json.dumps(queues))
    done = run_example("--queues", str(tmp_path / "queues.json"), "--workdir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "Error: Slurm has no partition 'no_such_partition'" in done.stderr
    assert not (tmp_path / "run").exists()


def test_without_a_reachable_slurm_it_says_how_to_start_one_and_starts_nothing(tmp_path):
    (tmp_path / "slurm.conf").write_text("")  # refused at once (a missing file is retried for 60 s)
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "slurm.conf")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--workdir", str(tmp_path / "run")], env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    if shutil.which("sinfo"):
        assert done.stderr.startswith("Error: Slurm does not answer (sinfo said: ")
        assert done.stderr.rstrip().endswith('start a single-node cluster with eval "$(scripts/slurm.sh)", '
                                              "or export SLURM_CONF")  # fmt: skip
    else:
        assert done.stderr.startswith("Error: sinfo is not on PATH")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pilots_that_cannot_start_end_the_run_with_what_their_batch_jobs_said(slurm_cluster, tmp_path):
    queues = json.loads((EXAMPLE / "queues.json").read_text())
    queues["queues"][0]["provider"]["worker_init"] = "echo this node cannot start pilots >&2; exit 3"
    (tmp_path / "queues.json").write_text(json.dumps(queues))
    done = run_example("--queues", str(tmp_path / "queues.json"), "--workdir", str(tmp_path / "run"))
    assert done.returncode == 1
    assert "pilots ended before running anything; the last: the slurm job " in done.stderr
    assert done.stderr.count("stderr ends: this node cannot start pilots") == 1
    engine = open_database(f"sqlite:///{tmp_path / 'run' / 'server.db'}")
    try:
        workers = rows(engine, s.workers)
        assert sum(w["state"] == "missing" for w in workers) >= 3
        assert all(w["pilot_id"] is None for w in workers) and rows(engine, s.pilots) == []
        ids = ",".join(w["provider_job_id"] for w in workers if w["provider_job_id"])
    finally:
        engine.dispose()
    left = subprocess.run(["squeue", "-h", "-o", "%i", "-t", LIVE, "-j", ids], capture_output=True, text=True)
    assert left.stdout.strip() == ""
