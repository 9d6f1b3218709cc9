"""Pilots through a Globus Compute endpoint: the endpoint's configuration and the pandaflow queue
checked with their own loaders, then the harvester's pilot function run offline through the
endpoint's own execution engine against a local pandaflow server.

    python examples/globus_compute/run.py [--workdir DIR] [--endpoint-dir DIR] [--queues FILE]

1. ``config.yaml`` (an endpoint at a Slurm site) is loaded by globus-compute-endpoint's own
   loader, ``queues.json`` by pandaflow's, and the queue's pilots are checked against the
   endpoint's nodes (cores, memory, walltime): ``checks.py``;
2. offline: a job server in this process whose embedded harvester serves the queue, adapted to
   this machine (small pilots; state and work directories under DIR, default a new temporary
   directory). The harvester's ``GlobusComputeProvider`` sends each pilot as the function
   ``run_pilot`` to the engine that config.yaml names, ``GlobusComputeEngine``, here on a parsl
   ``LocalProvider`` instead of Slurm; ``offline_endpoint.py`` does what the web service does in
   between. The pilot registers and runs a few shell jobs submitted over REST; once it is idle
   the harvester scales in (``stop_pilot`` on the same engine) and the pilot drains and exits.

The Globus web service is not contacted (no login, no endpoint registration); how to run it for
real is printed at the end, and is in docs/globus_compute.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from checks import Stop, check_endpoint_config, check_fit, check_queue
from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
from offline_endpoint import OfflineExecutor

from pandaflow.client import Client
from pandaflow.harvester import policy
from pandaflow.server.app import Server, ServerConfig
from pandaflow.server.jobs.queues import Queue

HERE = Path(__file__).resolve().parent
JOBS = 3
GIVE_UP_AFTER = 3  # pilots that ended without running anything
ENDPOINT_ID = "00000000-0000-4000-8000-00000000000e"  # the offline engine's; nothing is registered
ENDED = ("finished", "failed", "cancelled", "missing")  # the final worker states

REAL = """\
The Globus web service was not contacted: the functions went to an endpoint engine in this
process. To run it for real (docs/globus_compute.md, "Real set-up"):
  on the HPC login node:  globus-compute-endpoint configure pandaflow-milano, copy config.yaml
                          to ~/.globus_compute/pandaflow-milano/ (your account, partition, paths),
                          globus-compute-endpoint start pandaflow-milano, and
                          globus-compute-endpoint list (the endpoint's UUID);
  on the harvester host:  pip install 'pandaflow[globus]' and log in once:
                          python -c "from globus_compute_sdk import Client; Client()";
  then:                   put the UUID in queues.json's endpoint_id and run
                          pandaflow server --queues queues.json and beside it
                          pandaflow harvester --server URL --token-file FILE_THE_PILOTS_CAN_READ
"""


def local_queue_file(queue: Queue, workdir: Path) -> Path:
    """The queue adapted to this machine: small pilots, files under ``workdir``, a quick scale-in."""
    changes = {"worker_cores": 2, "worker_memory_mb": 2000, "max_workers": 1, "max_new_workers": 1,
               "worker_idle_s": 3, "arrival_timeout_s": 120, "submit_per_minute": 0,
               "worker_workdir": str(workdir / "work")}  # fmt: skip
    provider = {"state_dir": str(workdir / "pilots"), "worker_init": "", "walltime_s": 600,
                "poll_s": 0.2, "stop_grace_s": 30}  # fmt: skip
    entry = {**queue.to_dict(), **changes}
    entry["provider"] = {**entry["provider"], **provider}
    path = workdir / "queues-offline.json"
    path.write_text(json.dumps({"queues": [entry]}, indent=2))
    print(f"  the queue for this machine, {path}:")
    print("    " + ", ".join(f"{key}={value!r}" for key, value in {**changes, **provider}.items()))
    return path


def local_engine(endpoint_dir: Path, workdir: Path) -> Any:
    """config.yaml's engine built by the endpoint's loader, with a parsl LocalProvider for its
    provider (one block on this machine) and two workers: the pilot holds one for its whole life,
    and the harvester's stop_pilot needs another."""
    config = yaml.safe_load((endpoint_dir / "config.yaml").read_text())
    local = {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 0, "max_blocks": 1}
    engine = {**config["engine"], "provider": local, "max_workers_per_node": 2, "address": "127.0.0.1",
              "heartbeat_period": 1, "heartbeat_threshold": 15}  # fmt: skip
    built = load_config_yaml(yaml.safe_dump({**config, "engine": engine})).engine
    # The engine starts its interchange as the globus-compute-endpoint command beside this Python.
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    built.start(endpoint_id=ENDPOINT_ID, run_dir=str(workdir / "endpoint"))
    print(f"  endpoint engine {type(built).__name__} started here on a LocalProvider with 2 workers "
          f"(run dir {workdir / 'endpoint'})")  # fmt: skip
    return built


def wait_for(what: str, found: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


def run_offline(queue: Queue, endpoint_dir: Path, workdir: Path) -> bool:
    """The harvester's pilots through the endpoint engine; True if every job finished and the pilot
    was stopped on request and exited."""
    print("offline run: the harvester's pilot function through the endpoint's own engine")
    queues_file = local_queue_file(queue, workdir)
    engine = local_engine(endpoint_dir, workdir)
    token = secrets.token_urlsafe(24)
    db_url = f"sqlite:///{workdir / 'server.db'}"
    try:
        server = Server(ServerConfig(
            db_url=db_url, port=0, zmq_port=0, queues_file=str(queues_file), token=token,
            harvester=True, harvester_interval=0.5, harvester_workdir=str(workdir / "harvester"),
        ))  # fmt: skip
        (served,) = server.state.queues
        offline = OfflineExecutor(engine)
        # The provider the harvester built for the queue sends its functions here, where it would
        # otherwise make a globus_compute_sdk.Executor (and log in to Globus).
        server.harvester.provider(served, policy.Limits.of(served)).executor = offline
        server.start()
        client = Client(server.url, token)
        try:
            return drive(client, served, offline)
        except Exception as exc:  # say what became of the workers, then clean up
            print(f"Error: {type(exc).__name__}: {exc}", file=sys.stderr)
            for w in client.list_workers(queue=served.name)["workers"]:
                print(f"  worker {w['id']}: {w['state']}, {w['error'] or 'no error'}", file=sys.stderr)
            print(f"  the pilots' output: {workdir / 'pilots'}/*.log", file=sys.stderr)
            return False
        finally:
            server.stop()
            print(f"  server stopped; what it recorded: pandaflow --db {db_url} workers (or jobs, pilots)")
    finally:
        engine.shutdown()


def drive(client: Client, queue: Queue, offline: OfflineExecutor) -> bool:
    jobs = [{"name": f"square-{i}", "command": f"echo $(({i} * {i})) on $(hostname)", "queue": queue.name}
            for i in range(1, JOBS + 1)]  # fmt: skip
    workflow = client.submit("globus-compute-offline", jobs)["workflow_id"]
    print(f"  server {client.url}: submitted workflow {workflow}, {JOBS} shell jobs on {queue.name}")

    def ended() -> list[dict[str, Any]]:
        lost = client.list_workers(queue=queue.name, state="missing,failed")["workers"]
        if len(lost) >= GIVE_UP_AFTER:
            last = lost[0]["error"]  # newest first
            raise RuntimeError(f"{len(lost)} pilots ended before running anything; the last: {last}")
        found = client.list_jobs(workflow_id=workflow)["jobs"]
        return found if all(j["status"] in ("finished", "failed", "cancelled") for j in found) else []

    done = wait_for("the jobs to end", ended, timeout=180)
    worker = next(w for w in client.list_workers(queue=queue.name)["workers"] if w["pilot_id"])
    print(f"  worker {worker['id']}: run_pilot sent as {worker['provider_job_id']} (key/task id), "
          f"{worker['state']}; its pilot {worker['pilot_id']} ({worker['pilot']}) registered")  # fmt: skip
    for job in done:
        tail = client.get_job(job["id"])["stdout_tail"].strip()
        print(f"  job {job['id']} {job['name']}: {job['status']} on pilot {job['pilot_id']}: {tail!r}")

    print(f"  the queue is quiet: the harvester scales in after {queue.setting('worker_idle_s'):g} s")
    worker = wait_for("the worker to end", lambda: next(
        (w for w in client.list_workers(queue=queue.name)["workers"]
         if w["id"] == worker["id"] and w["state"] in ENDED), None), timeout=120)  # fmt: skip
    result = offline.futures[worker["provider_job_id"].rpartition("/")[2]].result(timeout=120)
    pilot = wait_for("the pilot to exit", lambda: next(
        (p for p in client.list_pilots(status="exited")["pilots"] if p["id"] == worker["pilot_id"]), None),
        timeout=60)  # fmt: skip
    print(f"  worker {worker['id']}: {worker['state']} ({worker['error']})")
    print(f"  run_pilot returned: stopped {result['stopped']!r} after {result['duration_s']:g} s, "
          f"exit code {result['exit_code']}; pilot {pilot['id']} {pilot['status']}")  # fmt: skip
    print(f"  functions the endpoint engine ran: {', '.join(name for name, _ in offline.submitted)}")
    return all(j["status"] == "finished" for j in done) and result["stopped"] == "asked to stop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="the offline run's files (default: a new temp dir)")
    parser.add_argument("--endpoint-dir", type=Path, default=HERE,
                        help="the endpoint's directory, holding config.yaml (default: %(default)s)")
    parser.add_argument("--queues", type=Path, default=HERE / "queues.json", help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        nodes = check_endpoint_config(args.endpoint_dir)
        queue = check_queue(args.queues)
        check_fit(queue, nodes)
    except Stop as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="pandaflow-globus-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ok = run_offline(queue, args.endpoint_dir, workdir)
    print(REAL, end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
