"""``GlobusComputeProvider``: pilots as long-running functions on a Globus Compute endpoint."""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import globus_compute_sdk
from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect
from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider

from pandaflow.providers.globus_compute import functions
from pandaflow.providers.script import block_script

log = logging.getLogger(__name__)

# Task states the web service reports for a task that has not finished
# (globus_compute_common.tasks.TaskState).
_RUNNING = {"running", "execution-start", "execution-end"}
_TAIL_IN_MESSAGE = 5


class GlobusComputeProvider(ExecutionProvider):
    """Run each pilot as a function on Globus Compute endpoint ``endpoint_id``, through
    ``globus_compute_sdk.Executor``.

    The parsl contract (``parsl/providers/base.py``)::

        submit(command, tasks_per_node, job_name) -> "<key>/<task id>"
            Executor.submit(run_pilot, command, key=...), waiting (``submit_timeout_s``) for the
            web service to acknowledge the task and give it an id
        status([job id, ...]) -> [JobStatus, ...]
            a finished future: its result (exit code, end of the pilot's output) or exception;
            otherwise one Client.get_batch_result(task ids) call: "running" is RUNNING, any
            other unfinished state ("waiting-for-ep", "waiting-for-nodes", ...) PENDING
        cancel([job id, ...]) -> [bool, ...]
            Executor.submit(stop_pilot, key=...) on the same endpoint: the pilot gets SIGTERM (it
            drains and exits), or never starts if it has not yet

    ``run_pilot`` (``functions.py``) runs the command as a subprocess and returns its exit code and
    the end of its log; an exit code of 0 is COMPLETED, others FAILED, a pilot stopped at
    ``walltime_s`` TIMEOUT, one stopped on request CANCELLED. An exception (the endpoint lost the
    worker, the function could not be deserialized) is FAILED with its message. Job ids carry
    the task id, so a restarted harvester still follows its workers through the web service and
    can still stop them.

    Resources belong to the endpoint: ``user_endpoint_config`` fills the endpoint's template
    (account, partition, walltime, ...), and ``size_variables`` names the template variables
    that get the worker's size from the queue (``{"cores": "CORES_PER_NODE", "memory_gb":
    "MEM_PER_NODE"}``); ``resource_specification`` is for MPI endpoints. The Executor (and its
    Globus login) is made on first use, so building the provider needs no network.
    """

    def __init__(
        self,
        endpoint_id: str,
        user_endpoint_config: dict[str, Any] | None = None,
        resource_specification: dict[str, Any] | None = None,
        size_variables: dict[str, str] | None = None,
        cpu: float = 1,
        memory_mb: int | None = None,
        state_dir: str = "~/.pandaflow/globus-compute",
        env: dict[str, str] | None = None,
        worker_init: str = "",
        walltime_s: float | None = None,
        stop_grace_s: float = 120.0,
        poll_s: float = 5.0,
        log_tail_lines: int = 40,
        submit_timeout_s: float = 60.0,
        amqp_port: int | None = None,
        label: str = "globus_compute",
    ) -> None:
        unknown = set(size_variables or {}) - {"cores", "memory_mb", "memory_gb"}
        if unknown:
            raise ValueError(
                f"size_variables: unknown key(s) {sorted(unknown)}; expected cores, memory_mb or memory_gb"
            )
        self.endpoint_id = endpoint_id
        self.resource_specification = resource_specification
        self.cores_per_node: int | None = int(cpu) if float(cpu).is_integer() else None
        self.mem_per_node: float | None = memory_mb / 1024 if memory_mb else None
        sizes = {"cores": self.cores_per_node or cpu, "memory_mb": memory_mb}
        if memory_mb:
            sizes["memory_gb"] = math.ceil(memory_mb / 1024)
        self.user_endpoint_config = dict(user_endpoint_config or {})
        for what, variable in (size_variables or {}).items():
            if sizes.get(what) is not None:
                self.user_endpoint_config.setdefault(variable, sizes[what])
        self.state_dir = state_dir
        self.env = {"PARSL_CORES": f"{cpu:g}", **(env or {})}
        if memory_mb:
            self.env.setdefault("PARSL_MEMORY_GB", f"{memory_mb / 1024:g}")
        self.worker_init = worker_init
        self.walltime_s = walltime_s
        self.stop_grace_s = stop_grace_s
        self.poll_s = poll_s
        self.log_tail_lines = log_tail_lines
        self.submit_timeout_s = submit_timeout_s
        self.amqp_port = amqp_port
        self._label = label
        self._executor: Any = None
        self._lock = threading.Lock()
        # parsl's provider attributes; the harvester scales, so blocks stay at one pilot.
        self.min_blocks, self.max_blocks, self.init_blocks = 0, 1, 0
        self.nodes_per_block, self.parallelism = 1, 1.0
        self.script_dir: str | None = None
        self.resources: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- the executor
    @property
    def executor(self) -> Any:
        """The ``globus_compute_sdk.Executor`` (made on first use); tests set their own here."""
        with self._lock:
            if self._executor is None:
                self._executor = globus_compute_sdk.Executor(
                    endpoint_id=self.endpoint_id,
                    user_endpoint_config=self.user_endpoint_config or None,
                    resource_specification=self.resource_specification,
                    amqp_port=self.amqp_port,
                    label=self._label,
                )
                self._executor.serializer = source_serializer()
            return self._executor

    @executor.setter
    def executor(self, value: Any) -> None:
        self._executor = value

    @property
    def futures(self) -> dict[str, Future]:
        """The futures of the pilots this instance sent, by job id."""
        return {k: v["future"] for k, v in self.resources.items() if v.get("future") is not None}

    # ---------------------------------------------------------------- parsl's interface
    @property
    def label(self) -> str:
        return self._label

    @property
    def status_polling_interval(self) -> int:
        return 30

    def arguments(self, command: str, key: str, tasks_per_node: int = 1) -> dict[str, Any]:
        """The keyword arguments ``run_pilot`` gets for ``command``."""
        script = block_script(command, tasks_per_node, self.worker_init)
        return {
            "command": script,
            "key": key,
            "state_dir": self.state_dir,
            "walltime_s": self.walltime_s,
            "grace_s": self.stop_grace_s,
            "poll_s": self.poll_s,
            "tail_lines": self.log_tail_lines,
            "env": self.env,
        }

    def submit(self, command: str, tasks_per_node: int = 1, job_name: str = "pandaflow-pilot") -> str:
        """Send the pilot function; returns ``"<key>/<task id>"`` once the web service has taken it.
        Raises what the SDK raises (no login, an unknown endpoint, a refused config) and
        ``TimeoutError`` when no task id comes within ``submit_timeout_s``."""
        key = f"{_safe(job_name)}-{secrets.token_hex(3)}"
        future = self.executor.submit(functions.run_pilot, **self.arguments(command, key, tasks_per_node))
        deadline = time.monotonic() + self.submit_timeout_s
        while getattr(future, "task_id", None) is None:
            if future.done():
                future.result()  # raises why the submission failed
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the Globus Compute web service gave no task id within {self.submit_timeout_s:g} s"
                )
            time.sleep(0.02)
        job_id = f"{key}/{future.task_id}"
        # Kept with parsl's bookkeeping, which the harvester prunes when a worker ends.
        self.resources[job_id] = {"job_id": job_id, "status": JobStatus(JobState.PENDING), "future": future}
        log.debug("globus compute: sent pilot %s to endpoint %s", job_id, self.endpoint_id)
        return job_id

    def status(self, job_ids: Sequence[object]) -> list[JobStatus]:
        """Each pilot's state: from its future once done, else from the web service."""
        names = [str(j) for j in job_ids]
        found: dict[str, JobStatus] = {}
        ask: dict[str, str] = {}  # task id -> job id
        futures = self.futures
        for name in names:
            future = futures.get(name)
            if future is not None and future.done():
                found[name] = _from_future(future)
            else:
                ask[name.rpartition("/")[2]] = name
        if ask:
            found.update(self._ask_service(ask))
        for name, status in found.items():
            if name in self.resources:
                self.resources[name]["status"] = status
        return [found[n] for n in names]

    def cancel(self, job_ids: Sequence[object]) -> list[bool]:
        """Ask each pilot to stop, by running ``stop_pilot`` on the same endpoint; True once that is
        sent (or when the pilot had ended already). The future is left alone: the task was sent,
        so cancelling it would only stop the harvester hearing how the pilot ended."""
        done = []
        for job_id in job_ids:
            name = str(job_id)
            future = self.futures.get(name)
            if future is not None and future.done():
                done.append(True)
                continue
            try:
                self.executor.submit(
                    functions.stop_pilot, key=name.rpartition("/")[0], state_dir=self.state_dir
                )
            except Exception as exc:  # the harvester retries a cancel it is not told succeeded
                log.warning("globus compute: cannot ask pilot %s to stop: %s", name, exc)
                done.append(False)
                continue
            if name in self.resources:
                self.resources[name]["status"] = JobStatus(JobState.CANCELLED)
            done.append(True)
        return done

    # ---------------------------------------------------------------- helpers
    def _ask_service(self, ask: dict[str, str]) -> dict[str, JobStatus]:
        try:
            reported = self.executor.client.get_batch_result(list(ask))
        except Exception as exc:
            why = f"the Globus Compute web service did not answer: {type(exc).__name__}: {exc}"
            return {name: JobStatus(JobState.UNKNOWN, why) for name in ask.values()}
        found = {}
        for task_id, name in ask.items():
            entry = reported.get(task_id)
            if entry is None:
                found[name] = JobStatus(JobState.UNKNOWN, f"the web service does not report task {task_id}")
            elif entry.get("pending", True):
                state = str(entry.get("status", "unknown"))
                found[name] = JobStatus(JobState.RUNNING if state in _RUNNING else JobState.PENDING, state)
            elif "result" in entry:
                found[name] = _from_result(entry["result"])
            else:
                found[name] = JobStatus(JobState.FAILED, str(entry.get("reason") or entry.get("status")))
        return found


def source_serializer() -> ComputeSerializer:
    """A ``ComputeSerializer`` that sends functions as source text, so the endpoint's Python needs
    only the standard library to run them (not pandaflow, not the same dill)."""
    return ComputeSerializer(strategy_code=PureSourceTextInspect())


def _from_future(future: Future) -> JobStatus:
    if future.cancelled():
        return JobStatus(JobState.CANCELLED, "its future was cancelled")
    exc = future.exception()
    if exc is not None:
        text = str(exc).strip().splitlines()
        return JobStatus(JobState.FAILED, f"{type(exc).__name__}: {text[-1] if text else ''}".strip())
    return _from_result(future.result())


def _from_result(result: Any) -> JobStatus:
    if not isinstance(result, dict) or "exit_code" not in result:
        return JobStatus(JobState.FAILED, f"the pilot function returned {result!r}")
    code, stopped = result["exit_code"], result.get("stopped")
    tail = (result.get("log_tail") or "").strip().splitlines()[-_TAIL_IN_MESSAGE:]
    where = f"on {result.get('host')}" if result.get("host") else ""
    message = "; ".join(x for x in (where, f"log ends: {' | '.join(tail)}" if tail else "") if x) or None
    if stopped == "walltime":
        return JobStatus(JobState.TIMEOUT, message, exit_code=code)
    if stopped:
        return JobStatus(JobState.CANCELLED, f"{stopped}; {message}" if message else stopped, exit_code=code)
    if code == 0:
        return JobStatus(JobState.COMPLETED, message, exit_code=0)
    return JobStatus(JobState.FAILED, message, exit_code=code)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:80] or "pilot"
