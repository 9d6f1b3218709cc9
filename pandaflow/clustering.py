"""Clustering: several short jobs (quanta) run as one payload.

Rubin's pipelines make many quanta of a few seconds to minutes each; starting, brokering and
tracking each one costs more than running it. As ctrl_bps's dimension clustering does, the jobs
of some tasks that share the values of some dimensions (``visit`` and ``detector``: one
isr -> characterizeImage -> calibrate chain) are merged into one job, which:

* runs the members' commands one after the other, in the order of their dependencies, each in
  its own subshell with its own environment, and stops at the first that fails (with its exit
  code, and a ``[pandaflow] step ...`` line in the log naming it);
* reads the members' inputs that no member writes, and writes every member's outputs, so
  other jobs depend on the cluster exactly as they depended on its members;
* waits for the members' parents (renamed to their own clusters where those were clustered);
* asks for the largest cores, memory and disk of its members, the sum of their walltimes,
  their highest priority and attempts.

The cluster job is named ``<label>_<value>_<value>...`` (the cluster label, then the dimension
values) and belongs to the task named by the cluster label, as bps names clustered jobs.
"""

from __future__ import annotations

import shlex
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_MAX_NAME = 255


@dataclass(frozen=True)
class ClusterSpec:
    """Jobs of ``tasks`` with equal values of ``dimensions`` (job variables) form one cluster."""

    label: str
    tasks: tuple[str, ...]
    dimensions: tuple[str, ...] = ()


def apply(
    jobs: list[dict[str, Any]], variables: list[dict[str, Any]], specs: Iterable[ClusterSpec]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Merge the jobs that ``specs`` cluster; ``variables[i]`` are the variables of ``jobs[i]``.

    Returns the new job list (unclustered jobs keep their place, a cluster takes the place of
    its first member) and the problems found (a job lacking a dimension, members that disagree
    on their queue, an ``always`` job in a cluster); with problems the job list is unchanged.
    """
    specs = list(specs)
    spec_of = {task: spec for spec in specs for task in spec.tasks}
    if not spec_of:
        return jobs, []
    problems: list[str] = []
    members: dict[str, list[int]] = defaultdict(list)  # cluster name -> member indexes
    cluster_of: dict[str, str] = {}  # member job name -> cluster name
    for i, job in enumerate(jobs):
        spec = spec_of.get(job.get("task", ""))
        if spec is None:
            continue
        values = variables[i] if i < len(variables) else {}
        missing = [d for d in spec.dimensions if d not in values]
        if missing:
            problems.append(
                f"job {job['name']!r} (task {job['task']!r}) is clustered by {list(spec.dimensions)} "
                f"in cluster {spec.label!r} but has no value for {missing} in its vars"
            )
            continue
        if job.get("always"):
            problems.append(f"job {job['name']!r} runs 'always' and cannot be part of cluster {spec.label!r}")
            continue
        name = "_".join([spec.label, *(str(values[d]) for d in spec.dimensions)])
        if len(name) > _MAX_NAME:
            problems.append(
                f"cluster name {name[:60]!r}... of job {job['name']!r} is over {_MAX_NAME} characters"
            )
            continue
        members[name].append(i)
        cluster_of[job["name"]] = name
    if problems:
        return jobs, problems
    label_of = {name: spec_of[jobs[idx[0]]["task"]].label for name, idx in members.items()}
    merged: dict[str, dict[str, Any]] = {}
    for name, idx in members.items():
        job, why = _merge(name, label_of[name], [jobs[i] for i in idx], cluster_of)
        if why:
            problems.append(why)
        else:
            merged[name] = job
    if problems:
        return jobs, problems
    out: list[dict[str, Any]] = []
    for job in jobs:
        name = cluster_of.get(job["name"])
        if name is None:
            parents = job.get("parents")
            if parents and any(p in cluster_of for p in parents):
                job = {**job, "parents": _renamed(parents, cluster_of, exclude=None)}
            out.append(job)
        elif name in merged:
            out.append(merged.pop(name))  # the first member's place
    return out, []


def _renamed(parents: list[str], cluster_of: dict[str, str], exclude: str | None) -> list[str]:
    return list(dict.fromkeys(cluster_of.get(p, p) for p in parents if cluster_of.get(p, p) != exclude))


def _order(jobs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Members in dependency order (file order among independent ones); None on a cycle."""
    index = {job["name"]: i for i, job in enumerate(jobs)}
    writer = {product: i for i, job in enumerate(jobs) for product in job.get("outputs") or ()}
    children: dict[int, list[int]] = defaultdict(list)
    indegree = [0] * len(jobs)
    for i, job in enumerate(jobs):
        before = {index[p] for p in job.get("parents") or () if p in index}
        before |= {writer[p] for p in job.get("inputs") or () if p in writer}
        before.discard(i)
        for j in before:
            children[j].append(i)
            indegree[i] += 1
    todo = deque(i for i in range(len(jobs)) if indegree[i] == 0)
    order = []
    while todo:
        i = todo.popleft()
        order.append(jobs[i])
        for child in sorted(children[i]):
            indegree[child] -= 1
            if indegree[child] == 0:
                todo.append(child)
    return order if len(order) == len(jobs) else None


def _merge(
    name: str, label: str, jobs: list[dict[str, Any]], cluster_of: dict[str, str]
) -> tuple[dict[str, Any], str]:
    ordered = _order(jobs)
    if ordered is None:
        return {}, f"the jobs of cluster {name!r} depend on each other in a cycle"
    bad_env = sorted({k for job in ordered for k in job.get("env") or {} if not k.isidentifier()})
    if bad_env:
        return {}, f"cluster {name!r}: environment variable names {bad_env} cannot be exported by a shell"
    queues = {job["queue"] for job in ordered if job.get("queue")}
    if len(queues) > 1:
        return {}, f"the jobs of cluster {name!r} ask for different queues: {sorted(queues)}"
    written = {p for job in ordered for p in job.get("outputs") or ()}
    inside = {job["name"] for job in ordered}
    inputs = [p for job in ordered for p in job.get("inputs") or () if p not in written]
    outputs = [p for job in ordered for p in job.get("outputs") or ()]
    parents = [p for job in ordered for p in job.get("parents") or () if p not in inside]
    merged: dict[str, Any] = {"name": name, "task": label, "command": script(ordered)}
    if inputs:
        merged["inputs"] = list(dict.fromkeys(inputs))
    if outputs:
        merged["outputs"] = list(dict.fromkeys(outputs))
    parents = _renamed(parents, cluster_of, exclude=name)
    if parents:
        merged["parents"] = parents
    for key in ("cores", "memory_mb", "disk_mb", "priority", "max_attempts", "memory_multiplier"):
        values = [job[key] for job in ordered if job.get(key) is not None]
        if values:
            merged[key] = max(values)
    caps = [job["memory_max_mb"] for job in ordered if job.get("memory_max_mb") is not None]
    if caps:
        merged["memory_max_mb"] = max([*caps, merged.get("memory_mb") or 0])
    walltimes = [job["walltime_s"] for job in ordered if job.get("walltime_s") is not None]
    if walltimes:
        merged["walltime_s"] = sum(walltimes)
    codes = [c for job in ordered for c in job.get("retry_unless_exit") or ()]
    if codes:
        merged["retry_unless_exit"] = sorted(set(codes))
    if queues:
        merged["queue"] = queues.pop()
    return merged, ""


def script(jobs: list[dict[str, Any]]) -> str:
    """The shell script of a cluster: each member in a subshell, in order, stopping at the first
    failure with its exit code."""
    lines = []
    n = len(jobs)
    for k, job in enumerate(jobs, 1):
        step = f"[pandaflow] step {k}/{n}: {job['name']}"
        lines.append(f"echo {shlex.quote(step)}")
        lines.append("(")
        for key, value in (job.get("env") or {}).items():
            lines.append(f"export {key}={shlex.quote(str(value))}")
        lines.append(job["command"])
        failed = shlex.quote(f"{step} failed with exit code")
        lines.append(f') || {{ rc=$?; echo {failed} "$rc" >&2; exit "$rc"; }}')
    return "\n".join(lines)
