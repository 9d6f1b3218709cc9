"""Providers: the parsl ``ExecutionProvider`` classes that start pilot workers, found by name.

A queue description names its provider in a ``provider`` block; every other key of the block is
a keyword argument of that provider's constructor::

    "provider": {"name": "slurm", "partition": "milano", "walltime": "48:00:00", "exclusive": false}

The contract is parsl's (``parsl/providers/base.py``), so parsl's own providers work unchanged::

    submit(command, tasks_per_node=1, job_name=...) -> job id      (raises on failure)
    status([job id, ...])                           -> [JobStatus, ...]
    cancel([job id, ...])                           -> [bool, ...]

with ``script_dir`` set before the first ``submit``. The harvester asks for one pilot per
submitted job (``tasks_per_node=1``) and does its own scaling, so parsl's block settings
(``init_blocks``, ``min_blocks``, ``max_blocks``, ``parallelism``) are refused: a queue's
``min_workers``/``max_workers`` say how many pilots to keep.

Blocks are checked at queue load (:func:`validate`) without constructing anything: the name must
be registered, every key must be a constructor parameter, and JSON values must fit the
parameter's annotation. :func:`build` then constructs the provider, filling in what the worker
needs from the queue (cores, memory) where the block leaves a matching parameter unset
(``cores_per_node``/``mem_per_node`` for batch systems, cpu/memory requests for Kubernetes).
"""

from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ProviderConfigError",
    "ProviderType",
    "adopt",
    "bookkeeping",
    "build",
    "known",
    "register",
    "validate",
]


class ProviderConfigError(ValueError):
    """A provider block is invalid; the message names where (file, queue, key) and what to do."""


Shape = Callable[[inspect.Signature, int, int | None], dict[str, Any]]


def batch_shape(signature: inspect.Signature, cores: int, memory_mb: int | None) -> dict[str, Any]:
    """Batch systems (parsl's cluster providers): ``cores_per_node`` and ``mem_per_node`` (GB)."""
    values: dict[str, Any] = {}
    if "cores_per_node" in signature.parameters:
        values["cores_per_node"] = cores
    if "mem_per_node" in signature.parameters and memory_mb:
        values["mem_per_node"] = max(1, math.ceil(memory_mb / 1024))
    return values


def kubernetes_shape(signature: inspect.Signature, cores: int, memory_mb: int | None) -> dict[str, Any]:
    """Kubernetes pods: request and limit the worker's cores and memory (pandaflow's provider takes
    ``cpu``/``memory_mb``, parsl's ``init_cpu``/``max_cpu``/``init_mem``/``max_mem``)."""
    values: dict[str, Any] = {"init_cpu": cores, "max_cpu": cores, "cpu": cores}
    if memory_mb:
        values["init_mem"] = values["max_mem"] = f"{memory_mb}Mi"
        values["memory_mb"] = memory_mb
    return {k: v for k, v in values.items() if k in signature.parameters}


@dataclass(frozen=True)
class ProviderType:
    """A registered provider: its name in queue files and the class (or ``"module:Class"``)."""

    name: str
    target: str | type
    shape: Shape = batch_shape
    description: str = ""

    def cls(self) -> type:
        if isinstance(self.target, type):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, ProviderType] = {}

# parsl settings the harvester owns: it scales by the queue's min_workers / max_workers.
_REFUSED = {
    "init_blocks": "the harvester submits pilots itself; use the queue's min_workers",
    "min_blocks": "use the queue's min_workers",
    "max_blocks": "use the queue's max_workers",
    "parallelism": "the harvester sizes pilots from ready jobs; use the queue's max_new_workers",
}

_LAUNCHERS = {
    "simple": "SimpleLauncher",
    "single_node": "SingleNodeLauncher",
    "srun": "SrunLauncher",
    "srun_mpi": "SrunMPILauncher",
    "mpiexec": "MpiExecLauncher",
    "mpirun": "MpiRunLauncher",
    "aprun": "AprunLauncher",
    "jsrun": "JsrunLauncher",
    "gnu_parallel": "GnuParallelLauncher",
}


def register(
    name: str, target: str | type, *, shape: Shape = batch_shape, description: str = "", replace: bool = False
) -> None:
    """Make ``name`` usable in queue files. ``target`` is a provider class or ``"module:Class"``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"provider {name!r} is already registered")
    _REGISTRY[name] = ProviderType(name, target, shape, description)


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def known() -> list[str]:
    """Registered provider names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: Any, where: str) -> ProviderType:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ProviderConfigError(f"{where}.name: unknown provider {name!r}; expected one of {known()}")
    return _REGISTRY[name]


def _signature(cls: type) -> tuple[inspect.Signature, dict[str, Any]]:
    signature = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations that cannot be resolved are simply not checked
        hints = {}
    return signature, hints


def _fits(annotation: Any, value: Any) -> bool:
    """Whether a JSON value fits a constructor annotation (unknown annotations are not checked)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (list, tuple) or origin in (list, tuple):
        return isinstance(value, list)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _describe(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any value"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def validate(block: Any, where: str = "provider") -> tuple[ProviderType, dict[str, Any]]:
    """Check a provider block; return its type and its keyword arguments (as written).

    ``where`` prefixes every message, e.g. ``"slac.json: queues[2].provider"``.
    """
    if not isinstance(block, Mapping):
        raise ProviderConfigError(f'{where}: expected an object like {{"name": "slurm", ...}}, got {block!r}')
    if "name" not in block:
        raise ProviderConfigError(f"{where}: missing required key 'name'; expected one of {known()}")
    kind = _lookup(block["name"], where)
    try:
        cls = kind.cls()
    except Exception as exc:  # the provider's module (or an optional dependency) is missing
        raise ProviderConfigError(
            f"{where}.name: provider {kind.name!r} is not usable here: {type(exc).__name__}: {exc}"
        ) from None
    signature, hints = _signature(cls)
    params = {
        n: p
        for n, p in signature.parameters.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    kwargs = {k: v for k, v in block.items() if k != "name"}
    for key, value in kwargs.items():
        if key in _REFUSED:
            raise ProviderConfigError(f"{where}.{key}: not a harvester setting: {_REFUSED[key]}")
        if key not in params:
            allowed = sorted(set(params) - set(_REFUSED))
            raise ProviderConfigError(
                f"{where}.{key}: unknown key for provider {kind.name!r}; expected one of {allowed}"
            )
        if key == "launcher":
            if value not in _LAUNCHERS:
                raise ProviderConfigError(
                    f"{where}.launcher: expected one of {sorted(_LAUNCHERS)}, got {value!r}"
                )
            continue
        annotation = hints.get(key, params[key].annotation)
        if not _fits(annotation, value):
            raise ProviderConfigError(f"{where}.{key}: expected {_describe(annotation)}, got {value!r}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ProviderConfigError(f"{where}: provider {kind.name!r} needs key(s) {missing}")
    return kind, kwargs


def build(
    block: Mapping[str, Any],
    *,
    script_dir: str,
    cores: int = 1,
    memory_mb: int | None = None,
    where: str = "provider",
    preemptible: bool | None = None,
) -> Any:
    """Construct the provider a block describes, for workers of ``cores`` and ``memory_mb``.

    Keys the block leaves out that describe a worker's size are filled in from the queue, and so
    is ``preemptible`` (spot VMs) for providers that take it.
    Raises :class:`ProviderConfigError` for a bad block, and whatever the provider raises
    when it cannot start (a missing ``sacct``, an unreachable API).
    """
    import os

    kind, kwargs = validate(block, where)
    cls = kind.cls()
    signature, _ = _signature(cls)
    values = {k: v for k, v in kind.shape(signature, cores, memory_mb).items() if k not in kwargs}
    if preemptible is not None and "preemptible" in signature.parameters and "preemptible" not in kwargs:
        values["preemptible"] = bool(preemptible)
    values.update(kwargs)
    if "launcher" in values:
        import parsl.launchers

        values["launcher"] = getattr(parsl.launchers, _LAUNCHERS[values["launcher"]])()
    if "persistent_volumes" in values:  # JSON lists of pairs -> tuples, as parsl expects
        values["persistent_volumes"] = [tuple(v) for v in values["persistent_volumes"]]
    provider = cls(**values)
    os.makedirs(script_dir, exist_ok=True)
    provider.script_dir = script_dir
    return provider


# ---------------------------------------------------------------- surviving a harvester restart

_KEPT = ("script_path", "remote_pid", "job_stdout_path", "job_stderr_path")


def bookkeeping(provider: Any, job_id: str) -> dict[str, Any]:
    """What the provider keeps in memory about a job that a new instance would need to follow it.

    parsl's providers track jobs in a ``resources`` dict; this copies its plain fields so a
    restarted harvester can :func:`adopt` the job instead of losing sight of it.
    """
    entry = getattr(provider, "resources", {}).get(job_id) or {}
    return {k: entry[k] for k in _KEPT if isinstance(entry.get(k), str | int)}


def adopt(provider: Any, job_id: str, kept: Mapping[str, Any] | None) -> bool:
    """Let ``provider`` follow a job an earlier instance submitted; False when it cannot."""
    from parsl.jobs.states import JobState, JobStatus

    resources = getattr(provider, "resources", None)
    if not isinstance(resources, dict):
        return False
    if job_id in resources:
        return True
    entry: dict[str, Any] = {
        "job_id": job_id,
        "status": JobStatus(JobState.PENDING),
        "job_stdout_path": None,
        "job_stderr_path": None,
        **(kept or {}),
    }
    if "script_path" in entry and "remote_pid" in entry:
        # A local process: parsl's LocalProvider checks the pid and the exit-code file itself.
        entry["status"] = JobStatus(JobState.RUNNING)
    elif type(provider).__name__ == "LocalProvider":
        return False
    resources[job_id] = entry
    return True


register("local", "parsl.providers.local.local:LocalProvider", description="processes on this machine")
register("slurm", "parsl.providers.slurm.slurm:SlurmProvider", description="Slurm batch jobs (sbatch)")
register("pbspro", "parsl.providers.pbspro.pbspro:PBSProProvider", description="PBS Pro batch jobs")
register("torque", "parsl.providers.torque.torque:TorqueProvider", description="Torque batch jobs")
register("lsf", "parsl.providers.lsf.lsf:LSFProvider", description="LSF batch jobs")
register("condor", "parsl.providers.condor.condor:CondorProvider", description="HTCondor jobs")
register(
    "grid_engine", "parsl.providers.grid_engine.grid_engine:GridEngineProvider", description="Grid Engine"
)
register(
    "kubernetes",
    "pandaflow.providers.kubernetes:KubernetesProvider",
    shape=kubernetes_shape,
    description="pilot Jobs or Pods on a Kubernetes cluster (GKE too), over the REST API",
)
register(
    "google_batch",
    "pandaflow.providers.googlecloud:GoogleBatchProvider",
    shape=kubernetes_shape,
    description="pilot jobs on Google Cloud Batch VMs (SPOT or STANDARD), through google-cloud-batch",
)
register(
    "globus_compute",
    "pandaflow.providers.globus_compute:GlobusComputeProvider",
    shape=kubernetes_shape,
    description="pilots as functions on a Globus Compute endpoint (HPC), through globus-compute-sdk",
)
