"""The two files of a Globus Compute site checked with their own loaders, and against each other:
the endpoint's ``config.yaml`` (globus-compute-endpoint's ``get_config``, what
``globus-compute-endpoint start`` runs) and the pandaflow queue file (``load_queues``, what
``pandaflow server --queues`` runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from click import ClickException
from globus_compute_endpoint.endpoint.config.utils import get_config

from pandaflow.server.jobs.queues import Queue, QueueConfigError, load_queues


class Stop(Exception):
    """A problem the user must fix; the message says what and how."""


@dataclass(frozen=True)
class Nodes:
    """What the endpoint's batch jobs give a pilot (None: the config does not say)."""

    cores: int | None
    memory_gb: float | None
    walltime: str | None


def check_endpoint_config(endpoint_dir: Path) -> Nodes:
    """``endpoint_dir/config.yaml`` through globus-compute-endpoint's loader (which builds its
    engine and provider, starting nothing); prints what it says."""
    path = endpoint_dir / "config.yaml"
    if not path.is_file():
        raise Stop(f"{path}: no such file (--endpoint-dir names a directory holding config.yaml)")
    try:
        config = get_config(endpoint_dir)
    except ClickException as exc:
        raise Stop(f"{path}: {exc.message}") from None
    engine = config.engine
    if engine is None:
        raise Stop(f"{path}: no engine section: pilots need an endpoint that runs functions")
    try:
        provider = getattr(engine, "provider", None)

        def said(key: str) -> object:
            return getattr(provider, key, None)

        nodes = Nodes(said("cores_per_node"), said("mem_per_node"), said("walltime"))
        where = ", ".join(f"{key} {said(key)}" for key in ("partition", "account") if said(key))
        print(f"endpoint config {path}: loaded by globus-compute-endpoint's get_config")
        print(f"  engine {type(engine).__name__}, {getattr(engine, 'max_workers_per_node', '?')} "
              f"worker(s) per node; provider {type(provider).__name__} ({where}); "
              f"{said('min_blocks')}..{said('max_blocks')} blocks of {said('nodes_per_block')} node(s), "
              f"each {nodes.cores} cores, {nodes.memory_gb} GB, {nodes.walltime}")  # fmt: skip
        return nodes
    finally:
        engine.shutdown()  # built, never started


def check_queue(path: Path) -> Queue:
    """The first queue of ``path`` with a ``globus_compute`` provider, validated as the server does."""
    try:
        queues = load_queues(path)
    except QueueConfigError as exc:
        raise Stop(str(exc)) from None
    found = [q for q in queues if (q.setting("provider") or {}).get("name") == "globus_compute"]
    if not found:
        raise Stop(f'{path}: no queue has a provider block {{"name": "globus_compute", ...}}')
    queue = found[0]
    block = queue.setting("provider")
    state_dir = block.get("state_dir", "~/.pandaflow/globus-compute")
    print(f"queue file {path}: loaded by pandaflow's load_queues")
    print(f"  queue {queue.name}: at most {queue.setting('max_workers')} pilots of "
          f"{queue.setting('worker_cores')} cores and {queue.setting('worker_memory_mb')} MB, "
          f"through endpoint {block['endpoint_id']}; pilot files in {state_dir}")  # fmt: skip
    return queue


def seconds(walltime: str) -> float:
    """Slurm's ``[D-]HH:MM:SS`` (or ``MM:SS``, or plain minutes) in seconds."""
    days, _, clock = walltime.rpartition("-")
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    if ":" not in clock:
        total *= 60
    return total + (float(days) * 86400 if days else 0.0)


def check_fit(queue: Queue, nodes: Nodes) -> None:
    """The queue's pilots fit the endpoint's nodes, and stop before the batch job's walltime."""
    cores, memory = queue.setting("worker_cores"), queue.setting("worker_memory_mb")
    walltime_s = queue.setting("provider").get("walltime_s")
    problems = []
    if nodes.cores and cores > nodes.cores:
        problems.append(f"worker_cores {cores} is more than the endpoint's cores_per_node {nodes.cores}")
    if nodes.memory_gb and memory > nodes.memory_gb * 1024:
        problems.append(f"worker_memory_mb {memory} is more than the endpoint's mem_per_node "
                        f"{nodes.memory_gb} GB")  # fmt: skip
    if nodes.walltime and (not walltime_s or walltime_s >= seconds(nodes.walltime)):
        problems.append(f"the provider's walltime_s ({walltime_s}) must be below the endpoint's "
                        f"walltime {nodes.walltime} ({seconds(nodes.walltime):g} s), so that pilots "
                        "drain before the batch system kills them")  # fmt: skip
    if problems:
        raise Stop(f"queue {queue.name} does not fit the endpoint's nodes: " + "; ".join(problems))
    told = [f"pilots of {cores} cores and {memory} MB"]
    if nodes.cores or nodes.memory_gb:
        told.append(f"on nodes of {nodes.cores} cores and {nodes.memory_gb} GB")
    if walltime_s:
        within = f", within the batch job's {nodes.walltime}" if nodes.walltime else ""
        told.append(f"stopped after {walltime_s:g} s{within}")
    print("  the queue fits the endpoint: " + ", ".join(told))
