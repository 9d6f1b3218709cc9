"""``examples/globus_compute/run.py``, run as a user runs it: the endpoint configuration and the queue
checked by their own loaders, then the harvester's pilot function offline through the endpoint's
own engine (``GlobusComputeEngine`` on a local provider) against a server in the script's process.
The tests read what it printed, the server database and pilot files it left, and the processes
left (none)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytest.importorskip("globus_compute_sdk")
pytest.importorskip("globus_compute_endpoint")

from support.lookups import rows  # noqa: E402

from pandaflow.server.store import schema as s  # noqa: E402
from pandaflow.server.store.db import open_database  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "globus_compute"


def run_example(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the example: (completed process, its work directory, the database it left)."""
    workdir = tmp_path_factory.mktemp("globus-compute")
    done = run_example("--workdir", str(workdir))
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    engine = open_database(f"sqlite:///{workdir / 'server.db'}")
    yield done, workdir, engine
    engine.dispose()


@pytest.mark.slow
def test_both_files_are_checked_by_their_own_loaders_and_against_each_other(run):
    out = run[0].stdout
    assert f"endpoint config {EXAMPLE / 'config.yaml'}: loaded by globus-compute-endpoint's get_config" in out
    assert "engine GlobusComputeEngine, 1 worker(s) per node; provider SlurmProvider (partition milano" in out
    assert f"queue file {EXAMPLE / 'queues.json'}: loaded by pandaflow's load_queues" in out
    assert "fits the endpoint: pilots of 16 cores and 65536 MB, on nodes of 16 cores and 64 GB" in out


@pytest.mark.slow
def test_the_pilot_function_ran_on_the_endpoint_engine_and_its_pilot_ran_the_jobs(run):
    done, workdir, engine = run
    (worker,) = rows(engine, s.workers)
    key, _, task_id = worker["provider_job_id"].rpartition("/")
    assert worker["provider"] == "globus_compute" and key.startswith(f"pandaflow-HPC_MILANO-{worker['id']}-")
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id)
    (pilot,) = rows(engine, s.pilots)
    assert worker["pilot_id"] == pilot["id"]
    jobs = rows(engine, s.jobs)
    assert [(j["status"], j["pilot_id"]) for j in jobs] == [("finished", pilot["id"])] * 3
    assert [j["stdout_tail"].split()[0] for j in jobs] == ["1", "4", "9"]
    # run_pilot's own files, on the endpoint's side: the pilot's output, and no pid or stop file left
    log = (workdir / "pilots" / f"{key}.log").read_text()
    assert f"registered as pilot {pilot['id']}" in log and "terminating: reporting 0 running" in log
    assert sorted(p.name for p in (workdir / "pilots").iterdir()) == [f"{key}.log"]
    assert "engine GlobusComputeEngine started here on a LocalProvider with 2 workers" in done.stdout


@pytest.mark.slow
def test_the_idle_pilot_is_stopped_through_the_engine_and_nothing_is_left(run):
    done, workdir, engine = run
    (worker,) = rows(engine, s.workers)
    assert worker["state"] == "cancelled" and worker["ended_at"] and "scaled in" in worker["error"]
    assert {p["status"] for p in rows(engine, s.pilots)} == {"exited"}
    assert "run_pilot returned: stopped 'asked to stop' after " in done.stdout
    assert "functions the endpoint engine ran: run_pilot, stop_pilot" in done.stdout
    assert "The Globus web service was not contacted" in done.stdout
    ours = [p for p in psutil.process_iter(["cmdline"]) if str(workdir) in " ".join(p.info["cmdline"] or [])]
    assert ours == []


def endpoint_dir(tmp_path: Path, engine: dict) -> Path:
    (tmp_path / "endpoint").mkdir()
    (tmp_path / "endpoint" / "config.yaml").write_text(json.dumps({"engine": engine}))  # JSON is YAML
    return tmp_path / "endpoint"


def test_an_endpoint_config_its_loader_refuses_is_reported_with_the_loaders_message(tmp_path):
    bad = endpoint_dir(tmp_path, {"type": "GlobusComputeEngine", "max_workers_per_nod": 1})
    done = run_example("--endpoint-dir", str(bad), "--workdir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"Error: {bad / 'config.yaml'}: ")
    assert "unexpected keyword argument 'max_workers_per_nod'" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_queue_whose_pilots_do_not_fit_the_endpoints_nodes_is_refused(tmp_path):
    queues = json.loads((EXAMPLE / "queues.json").read_text())
    queues["queues"][0]["worker_cores"] = 32
    (tmp_path / "queues.json").write_text(json.dumps(queues))
    done = run_example("--queues", str(tmp_path / "queues.json"), "--workdir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "Error: queue HPC_MILANO does not fit the endpoint's nodes: worker_cores 32 is more than the "
        "endpoint's cores_per_node 16"
    )
    assert not (tmp_path / "run").exists()


def test_a_queue_file_with_a_mistake_is_refused_with_where_it_is(tmp_path):
    queues = json.loads((EXAMPLE / "queues.json").read_text())
    queues["queues"][0]["provider"]["endpoint"] = queues["queues"][0]["provider"].pop("endpoint_id")
    (tmp_path / "queues.json").write_text(json.dumps(queues))
    done = run_example("--queues", str(tmp_path / "queues.json"), "--workdir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"Error: {tmp_path / 'queues.json'}: queues[0].provider.endpoint: unknown key for provider "
        "'globus_compute'; expected one of ['amqp_port', 'cpu', 'endpoint_id', "
    )
