"""A bps GenericWorkflow as one pandaflow workflow submission (the body of ``POST /workflows``).

Each generic job becomes a shell job of the task named by its pipeline label, with the generic
graph's edges as ``parents``. No-op jobs (bps job ordering) are not submitted: their children
wait for their parents instead. Job groups are flattened: a group's first jobs wait for the
group's parents and the group's children wait for its last jobs. ``pipetaskInit`` is a parent
of every job that has no other parent, and the final job (``finalJob``) waits for every job
without children, so it runs last; with ``finalJob.whenRun: ALWAYS`` (bps's default) it runs
once they all ended, whatever the outcome (a pandaflow ``always`` job).

Command lines are resolved the way the other plugins do: the executable and the arguments,
then ``{name}`` placeholders filled from the job's ``cmdvals``, then ``<ENV:NAME>`` turned into
``${NAME}`` (expanded by the shell on the pilot) and ``<FILE:name>`` into the file's path (a
shared file system is assumed, as in ctrl_bps_parsl), repeated until nothing changes. The job's
``environment`` is resolved the same way; a value that names other variables (bps keeps
``PATH: /opt/bin:<ENV:PATH>`` for the worker to expand) is exported at the head of the command
line, since the pilot sets ``env`` values verbatim.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lsst.ctrl.bps import (
    BaseWmsWorkflow,
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowJob,
    GenericWorkflowNodeType,
)

INIT_LABEL = "pipetaskInit"
BODY_FILE = "pandaflow_workflow.json"
_ENV = re.compile(r"<ENV:([^>\s]+)>")
_FILE = re.compile(r"<FILE:([^>\s]+)>")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TranslationError(ValueError):
    """A generic job cannot be expressed as a pandaflow job; the message names the job."""


class _KeepMissing(dict):
    def __init__(self, values: dict[str, Any], job: str):
        super().__init__(values)
        self.job = job

    def __missing__(self, key: str) -> str:
        raise TranslationError(
            f"job {self.job!r}: the command line uses {{{key}}} but the job's cmdvals has no {key!r}"
        )


def _file_paths(gwf: GenericWorkflow, job_name: str) -> dict[str, str]:
    try:
        files = gwf.get_job_inputs(job_name, data=True, transfer_only=False)
    except Exception:  # the final job is kept outside the graph
        files = []
    return {f.name: f.src_uri for f in files if f.src_uri}


def resolve(text: str, cmdvals: dict[str, Any], files: dict[str, str], job: str, gwf: GenericWorkflow) -> str:
    """Resolve ``{cmdvals}``, ``<ENV:...>`` and ``<FILE:...>`` in a bps command line."""
    text = text.format_map(_KeepMissing(cmdvals, job)) if "{" in text else text

    def file_path(match: re.Match) -> str:
        name = match.group(1)
        if name not in files:
            try:
                src = gwf.get_file(name).src_uri
            except Exception:
                src = None
            if not src:
                raise TranslationError(f"job {job!r}: the command line names <FILE:{name}>, an unknown file")
            files[name] = src
        return files[name]

    for _ in range(20):  # a value may hold further symbols (a file path with <ENV:...>)
        new = _FILE.sub(file_path, _ENV.sub(r"${\1}", text))
        if new == text:
            break
        text = new
    return text


def command_line(job: GenericWorkflowJob, gwf: GenericWorkflow, exports: dict[str, str] | None = None) -> str:
    """The shell command of a generic job; ``exports`` are set (and expanded) by the shell first."""
    if job.executable is None or not job.executable.src_uri:
        raise TranslationError(f"job {job.name!r} has no executable")
    command = job.executable.src_uri + (" " + job.arguments if job.arguments else "")
    command = resolve(command, dict(job.cmdvals or {}), _file_paths(gwf, job.name), job.name, gwf)
    if job.pre_cmdline:
        command = f"{job.pre_cmdline} && {command}"
    if job.post_cmdline:
        command = f"{command}; status=$?; {job.post_cmdline}; exit $status"
    for name, value in reversed((exports or {}).items()):
        command = f'export {name}="{_double_quoted(value)}"; {command}'
    return command


def _double_quoted(value: str) -> str:
    """``value`` for the inside of shell double quotes: ``$`` stays live, so ``${NAME}`` expands."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")


def environment(job: GenericWorkflowJob, gwf: GenericWorkflow) -> tuple[dict[str, str], dict[str, str]]:
    """The job's ``environment`` resolved, split into literal values (the pilot sets them as they
    are) and values naming other variables (exported by the job's shell, which expands them)."""
    literal: dict[str, str] = {}
    exported: dict[str, str] = {}
    files = _file_paths(gwf, job.name)
    for key, value in (job.environment or {}).items():
        name, text = str(key), resolve(str(value), dict(job.cmdvals or {}), files, job.name, gwf)
        if "$" in text and _IDENTIFIER.fullmatch(name):
            exported[name] = text
        else:
            literal[name] = text
    return literal, exported


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(math.ceil(float(value)))
    except (TypeError, ValueError):
        return None


def job_fields(job: GenericWorkflowJob, gwf: GenericWorkflow) -> dict[str, Any]:
    """The pandaflow fields of one generic job (resources and ctrl_bps retry semantics)."""
    env, exports = environment(job, gwf)
    out: dict[str, Any] = {"name": job.name, "task": job.label, "command": command_line(job, gwf, exports)}
    if env:
        out["env"] = env
    memory = _int(job.request_memory)
    if memory:
        out["memory_mb"] = memory
    if job.request_cpus:
        out["cores"] = max(1, _int(job.request_cpus) or 1)
    if job.request_disk:
        out["disk_mb"] = _int(job.request_disk)
    walltime = _int(job.request_walltime)  # minutes in bps
    if walltime:
        out["walltime_s"] = walltime * 60
    priority = _int(job.priority)
    if priority is not None:
        out["priority"] = priority
    if job.number_of_retries is not None:
        out["max_attempts"] = 1 + max(0, int(job.number_of_retries))
    if job.memory_multiplier and float(job.memory_multiplier) > 1 and memory:
        out["memory_multiplier"] = float(job.memory_multiplier)
        cap = _int(job.request_memory_max)
        if cap:
            out["memory_max_mb"] = max(cap, memory)
    codes = job.retry_unless_exit
    if codes is not None:
        out["retry_unless_exit"] = [int(c) for c in (codes if isinstance(codes, list | tuple) else [codes])]
    return out


def _flatten(graph: GenericWorkflow, outer: list[str]) -> Iterator[tuple[GenericWorkflowJob, list[str]]]:
    """``(job, parent job names)`` in topological order; ``outer`` are the parents of ``graph``'s roots.

    ``exits[node]`` are the submitted jobs a child of ``node`` has to wait for: the job itself,
    the exits of a no-op's parents, or the exits of a group's last nodes.
    """
    exits: dict[str, list[str]] = {}
    for name in graph:  # GenericWorkflow iterates in topological order
        node = graph.get_job(name)
        preds = list(graph.predecessors(name))
        parents = list(dict.fromkeys(p for pred in preds for p in exits[pred])) if preds else list(outer)
        kind = node.node_type
        if kind == GenericWorkflowNodeType.NOOP:
            exits[name] = parents
        elif kind == GenericWorkflowNodeType.GROUP:
            inner = list(_flatten(node, parents))
            yield from inner
            sinks = {n for n in node if not list(node.successors(n))}
            exits[name] = [j.name for j, _ in inner if j.name in sinks] or parents
        elif kind == GenericWorkflowNodeType.PAYLOAD:
            yield node, parents
            exits[name] = [name]
        else:
            raise TranslationError(f"node {name!r}: {kind.name} nodes are not supported by pandaflow")


def final_job_problem(gwf: GenericWorkflow) -> str | None:
    """Why bps's final job could never end on this run's quantum graph, else None.

    The default final job (lsst-ctrl-bps 30.2026.4300) runs ``butler aggregate-graph``, which
    reads only the ``.qg`` format: on a ``.qgraph`` file (the old format, which bps keeps when
    the user's ``qgraphFile`` has that extension) its workers fail while it waits for them, for
    ever. Checked with the reader aggregate-graph uses, so a version that reads both passes.
    """
    final = gwf.get_final()
    script = getattr(getattr(final, "executable", None), "src_uri", None)
    try:
        graph = gwf.get_file("runQgraphFile").src_uri
        if not script or "aggregate-graph" not in Path(script).read_text(errors="replace"):
            return None
    except (KeyError, OSError):
        return None
    from lsst.pipe.base.pipeline_graph import TaskImportMode
    from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

    try:
        with PredictedQuantumGraph.open(graph, import_mode=TaskImportMode.DO_NOT_IMPORT):
            return None
    except Exception as exc:  # what aggregate-graph's workers would fail with
        return (
            f"the final job runs 'butler aggregate-graph', which cannot read the quantum graph {graph} "
            f"({type(exc).__name__}: {exc}) and would then wait for ever; save the graph in the .qg "
            "format (QuantumGraph.saveUri('name.qg'), pipetask qgraph --save-qgraph name.qg) and give "
            "that as qgraphFile"
        )


def to_body(gwf: GenericWorkflow, owner: str | None = None) -> dict[str, Any]:
    """The ``POST /api/v1/workflows`` body of a generic workflow (jobs in topological order)."""
    jobs: list[dict[str, Any]] = []
    init = INIT_LABEL if INIT_LABEL in gwf else None
    has_child: set[str] = set()
    for job, parents in _flatten(gwf, []):
        fields = job_fields(job, gwf)
        if not parents and init and job.name != init:
            parents = [init]
        if parents:
            fields["parents"] = parents
            has_child.update(parents)
        jobs.append(fields)
    # bps keeps a final job outside the graph only for finalJob.whenRun ALWAYS (with SUCCESS it is
    # an ordinary sink of the graph): it runs once every job has ended, whatever the outcome, so
    # whatever was produced reaches the butler even when some quanta failed.
    final = gwf.get_final()
    if final is not None:
        leaves = [j["name"] for j in jobs if j["name"] not in has_child]
        if isinstance(final, GenericWorkflow):
            for job, parents in _flatten(final, leaves):
                fields = job_fields(job, final)
                if parents:
                    fields["parents"] = parents
                if set(parents) <= set(leaves):  # the group's first jobs: after everything else
                    fields["always"] = True
                jobs.append(fields)
        else:
            jobs.append({**job_fields(final, gwf), "always": True, **({"parents": leaves} if leaves else {})})
    body: dict[str, Any] = {"name": gwf.name, "jobs": jobs}
    if owner:
        body["owner"] = owner
    return body


class PandaflowWorkflow(BaseWmsWorkflow):
    """A generic workflow translated to a pandaflow submission, written to the submit directory.

    ``run_id`` is the pandaflow workflow id once :meth:`PandaflowService.submit` recorded it.
    """

    def __init__(self, name: str, config: BpsConfig):
        super().__init__(name, config)
        self.body: dict[str, Any] = {}

    @classmethod
    def from_generic_workflow(
        cls, config: BpsConfig, generic_workflow: GenericWorkflow, out_prefix: str, service_class: str
    ) -> PandaflowWorkflow:
        workflow = cls(generic_workflow.name, config)
        workflow.service_class = service_class
        workflow.submit_path = out_prefix
        _, operator = config.search("operator", opt={"default": None}) if config else (False, None)
        workflow.body = to_body(generic_workflow, owner=operator or None)
        return workflow

    def write(self, out_prefix: str) -> Path:
        """Write the submission body to ``out_prefix/pandaflow_workflow.json``."""
        path = Path(out_prefix) / BODY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.body, indent=1))
        return path
