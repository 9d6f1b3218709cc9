"""Pilots through Slurm: a job server whose embedded harvester submits pilots with sbatch, a parsl
workflow run on them, and the idle pilots cancelled with scancel.

    python examples/slurm_harvester/run.py [--queues FILE] [--workdir DIR]

1. loads the queue description (``queues.json`` beside this script: queue ``slurm_debug``, a
   ``slurm`` provider block for partition ``debug``) as the server does, and checks that Slurm
   answers and has that partition;
2. starts a job server in this process with its harvester (``ServerConfig(harvester=True)``),
   its SQLite database and the harvester's scripts and pilot directories under DIR (default: a
   new temporary directory, kept afterwards);
3. runs a parsl workflow through ``PandaExecutor(server_url=..., token=...)``: the harvester sees
   the ready jobs and submits pilots (``sbatch``), each pilot registers and runs jobs inside its
   Slurm job;
4. prints the workers the harvester submitted (with their Slurm job ids) and what each job
   returned (the Slurm job it ran in);
5. waits for the harvester to scale in (an idle pilot is cancelled after the queue's
   ``worker_idle_s``), checks with ``squeue`` that no Slurm job of the run is left, and stops the
   server. A Slurm job still alive at the end (the run failed or was interrupted) is cancelled.

Needs a Slurm cluster with the queue's partition, ``sbatch``, ``squeue`` and ``scancel`` on PATH
(and ``SLURM_CONF`` exported if the cluster needs it): ``eval "$(scripts/slurm.sh)"`` starts a
single-node one on this machine. DIR must be on a file system the Slurm nodes see, and the nodes
must reach this machine's 127.0.0.1 (a single-node cluster does); for a real cluster, see
docs/harvester.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import parsl
from parsl import python_app
from parsl.config import Config

from pandaflow.client import Client
from pandaflow.executors import PandaExecutor
from pandaflow.server.app import Server, ServerConfig
from pandaflow.server.jobs.queues import Queue, QueueConfigError, load_queues

QUEUES = Path(__file__).with_name("queues.json")
TASKS = 4
WORKFLOW_TIMEOUT_S = 600
GIVE_UP_AFTER = 3  # pilots that ended without running anything
ENDED = ("finished", "failed", "cancelled", "missing")  # the final worker states
LIVE_SLURM_STATES = "pending,running,suspended,completing,configuring,requeued,resizing,signaling"


@python_app
def square(x: int) -> dict[str, Any]:
    """``x * x``, with the Slurm job and host it ran in (the pilot's environment inside sbatch). It
    takes a second, so that the jobs spread over the pilots."""
    import os
    import socket
    import time

    time.sleep(1)
    job = os.environ.get("SLURM_JOB_ID")
    return {"x": x, "square": x * x, "slurm_job": job, "host": socket.gethostname()}


class Stop(Exception):
    """A problem the user must fix; the message says what and how."""


def slurm_queue(path: Path) -> Queue:
    """The first queue of ``path`` with a ``slurm`` provider, validated as the server validates it."""
    try:
        queues = load_queues(path)
    except QueueConfigError as exc:
        raise Stop(str(exc)) from None
    for queue in queues:
        if (queue.setting("provider") or {}).get("name") == "slurm":
            return queue
    raise Stop(f"{path}: no queue has a slurm provider block (\"provider\": {{\"name\": \"slurm\", ...}})")


def check_slurm(partition: str | None) -> None:
    """Slurm answers and has the partition the provider block names (or a default one)."""
    for tool in ("sinfo", "sbatch", "squeue", "scancel"):
        if shutil.which(tool) is None:
            raise Stop(f"{tool} is not on PATH: this needs a Slurm cluster's commands")
    args = ["sinfo", "-h", "-o", "%P %a"] + (["-p", partition] if partition else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    hint = 'start a single-node cluster with eval "$(scripts/slurm.sh)", or export SLURM_CONF'
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Stop(f"Slurm does not answer (sinfo said: {said}): {hint}")
    if not done.stdout.strip():
        raise Stop(f"Slurm has no partition {partition!r}: name one of `sinfo -s` in the provider block")
    print(f"Slurm answers: partition {done.stdout.split()[0]} is {done.stdout.split()[1]}")


def slurm_jobs_alive(job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` that Slurm still has pending or running (``squeue``)."""
    if not job_ids:
        return []
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-t", LIVE_SLURM_STATES, "-j", ",".join(job_ids)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0 and "Invalid job id" not in done.stderr:  # every id purged already
        raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def wait_for(what: str, predicate: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def run_workflow(client: Client, token: str, queue: str, run_dir: Path) -> list[dict[str, Any]]:
    """The parsl workflow: TASKS python apps on the server, whose pilots the harvester provides.
    Gives up when pilots keep ending before they run anything (they cannot start, or cannot reach
    the server), saying what the last one's batch job said."""
    executor = PandaExecutor(label="slurm", server_url=client.url, token=token, queue=queue,
                             workflow="slurm-harvester-example")  # fmt: skip
    with parsl.load(Config(executors=[executor], run_dir=str(run_dir), strategy="none")):
        futures = [square(x) for x in range(1, TASKS + 1)]
        print(f"submitted {TASKS} parsl apps to queue {queue}; the harvester's pilots run them")
        deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
        while concurrent.futures.wait(futures, timeout=1.0).not_done:
            lost = client.list_workers(queue=queue, state="missing,failed")["workers"]
            if len(lost) >= GIVE_UP_AFTER:
                last = lost[0]["error"]  # newest first
                raise RuntimeError(f"{len(lost)} pilots ended before running anything; the last: {last}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workflow had not ended after {WORKFLOW_TIMEOUT_S} s")
        return [future.result() for future in futures]


def print_workers(client: Client, queue: str) -> list[dict[str, Any]]:
    workers = sorted(client.list_workers(queue=queue)["workers"], key=lambda w: w["id"])
    for w in workers:
        pilot = f"pilot {w['pilot_id']} ({w['pilot']})" if w["pilot_id"] else "no pilot registered"
        error = f"; {w['error']}" if w["error"] else ""
        print(f"  worker {w['id']}: Slurm job {w['provider_job_id']}, {w['state']} "
              f"(Slurm: {w['batch_state']}), {pilot}{error}")  # fmt: skip
    return workers


def run_and_scale_in(client: Client, token: str, queue: Queue, workdir: Path) -> bool:
    """The workflow, the workers that ran it, then the scale-in; True if it all happened."""
    results = run_workflow(client, token, queue.name, workdir / "runinfo")
    workers = print_workers(client, queue.name)
    print("results:")
    for r in results:
        print(f"  square({r['x']}) = {r['square']}, run in Slurm job {r['slurm_job']} on {r['host']}")

    idle_s = queue.setting("worker_idle_s")
    print(f"the queue is quiet: waiting for the harvester to cancel the idle pilots (after {idle_s:g} s)")
    wait_for("every worker to end",
             lambda: all(w["state"] in ENDED for w in client.list_workers(queue=queue.name)["workers"]),
             timeout=idle_s + 120)  # fmt: skip
    workers = print_workers(client, queue.name)
    slurm_ids = [w["provider_job_id"] for w in workers if w["provider_job_id"]]
    wait_for("Slurm to end the cancelled jobs", lambda: not slurm_jobs_alive(slurm_ids), timeout=60)
    print(f"squeue: none of Slurm jobs {', '.join(slurm_ids)} is left")
    pilot_ids = {w["pilot_id"] for w in workers if w["pilot_id"]}

    def pilots_gone() -> list[dict[str, Any]]:
        pilots = [p for p in client.list_pilots(queue=queue.name)["pilots"] if p["id"] in pilot_ids]
        return pilots if all(p["status"] != "active" for p in pilots) else []

    # a pilot that got scancel's SIGTERM drains and says goodbye (exited); one killed before it
    # could is lost once its heartbeats stop
    if pilot_ids:
        gone = wait_for("the pilots to leave", pilots_gone, timeout=60)
        print("pilots: " + ", ".join(f"{p['id']} {p['status']}" for p in sorted(gone, key=lambda p: p["id"])))
    if len(results) == TASKS and all(r["slurm_job"] in slurm_ids for r in results):
        return True
    print("Error: some results did not come from the harvester's Slurm jobs", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=Path, default=QUEUES, help="queue file (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="where the run's files go (default: a new temp dir)")
    args = parser.parse_args(argv)
    try:
        queue = slurm_queue(args.queues)
        provider = queue.setting("provider")
        print(f"queue {queue.name} ({args.queues}): pilots of {queue.setting('worker_cores')} core(s) and "
              f"{queue.setting('worker_memory_mb')} MB through Slurm partition {provider.get('partition')}, "
              f"at most {queue.setting('max_workers')} at once")  # fmt: skip
        check_slurm(provider.get("partition"))
    except Stop as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="pandaflow-slurm-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    token = secrets.token_urlsafe(24)
    db_url = f"sqlite:///{workdir / 'server.db'}"
    server = Server(ServerConfig(
        db_url=db_url, port=0, zmq_port=0, queues_file=str(args.queues), token=token,
        harvester=True, harvester_interval=1.0, harvester_workdir=str(workdir / "harvester"),
    ))  # fmt: skip
    server.start()
    client = Client(server.url, token)
    print(f"server {server.url} with its harvester (database {db_url}, pilots' files under {workdir})")
    ok = False
    try:
        ok = run_and_scale_in(client, token, queue, workdir)
    except Exception as exc:  # say what went wrong with the workers, then clean up
        print(f"Error: {type(exc).__name__}: {exc}; the workers (their pilots' output is in "
              f"{workdir / 'harvester' / 'scripts' / queue.name}):", file=sys.stderr)  # fmt: skip
        print_workers(client, queue.name)
    finally:
        server.harvester.stop()  # no new submissions from here on
        workers = client.list_workers(queue=queue.name)["workers"]
        left = slurm_jobs_alive([w["provider_job_id"] for w in workers if w["provider_job_id"]])
        if left:  # the run failed or was interrupted: leave nothing in the batch system
            subprocess.run(["scancel", *left], timeout=60)
            print(f"cancelled Slurm jobs {', '.join(left)} (scancel)")
        server.stop()
    print(f"server stopped; look at the run: pandaflow --db {db_url} workers   (or jobs, pilots)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
