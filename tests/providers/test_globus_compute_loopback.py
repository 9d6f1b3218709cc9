"""An offline stand-in for ``globus_compute_sdk.Executor`` built from the real parts on both sides of
the Globus web service, and the tests that show those parts carry the pilot function.

:class:`LoopbackExecutor` does what the SDK and the web service do with a submission, using their
own code: the function is serialized as the SDK registers it (``FunctionRegistrationData``),
its arguments packed as the SDK's ``Batch.add`` packs them, the two joined into one task
buffer and wrapped in a ``messagepack`` ``Task`` as the web service hands it to an endpoint.
A real endpoint engine from ``globus-compute-endpoint`` (``ProcessPoolEngine``, or the
``GlobusComputeEngine`` that production endpoints run: parsl's HighThroughputExecutor with a
local provider) executes it; its packed ``Result`` is unpacked and deserialized as the SDK's
result watcher does, into a ``ComputeFuture``. Only the network hops are missing.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import uuid

import pytest

pytest.importorskip("globus_compute_sdk")
pytest.importorskip("globus_compute_endpoint")

from globus_compute_common import messagepack  # noqa: E402
from globus_compute_common.messagepack.message_types import Task  # noqa: E402
from globus_compute_endpoint.engines import ProcessPoolEngine  # noqa: E402
from globus_compute_endpoint.engines.base import GCFuture  # noqa: E402
from globus_compute_sdk.errors import TaskExecutionFailed  # noqa: E402
from globus_compute_sdk.sdk.asynchronous.compute_future import ComputeFuture  # noqa: E402
from globus_compute_sdk.sdk.batch import Batch  # noqa: E402
from globus_compute_sdk.sdk.client import FunctionRegistrationData  # noqa: E402
from globus_compute_sdk.serialize import PureSourceTextInspect  # noqa: E402
from support.waiting import wait_until  # noqa: E402

from pandaflow.providers.globus_compute import functions, source_serializer  # noqa: E402

ENDPOINT = uuid.UUID("00000000-0000-4000-8000-0000000000e1")


class LoopbackClient:
    """The web service's task-status answer (``Client.get_batch_result``) for loopback tasks."""

    def __init__(self, executor: LoopbackExecutor) -> None:
        self.executor = executor
        self.fail_with: Exception | None = None

    def get_batch_result(self, task_id_list):
        if self.fail_with is not None:
            raise self.fail_with
        found = {}
        for task_id in map(str, task_id_list):
            future = self.executor.by_task.get(task_id)
            if future is None:
                continue
            if not future.done():
                status = "running" if task_id in self.executor.started else "waiting-for-ep"
                found[task_id] = {"pending": True, "status": status}
            elif future.exception() is None:
                found[task_id] = {"pending": False, "status": "success", "result": future.result()}
            # a failed task is left out, as the real client leaves it out (it logs the exception)
        return found


class LoopbackExecutor:
    """``Executor.submit`` -> SDK packing -> a real endpoint engine -> SDK-style result."""

    def __init__(self, engine, *, acknowledge: bool = True) -> None:
        self.engine = engine
        self.serializer = source_serializer()
        self.client = LoopbackClient(self)
        self.acknowledge = acknowledge  # False: the web service never answers
        self.functions: dict[str, str] = {}  # function id -> registered function code
        self.by_task: dict[str, ComputeFuture] = {}
        self.started: set[str] = set()
        self.submitted: list[tuple[str, tuple, dict]] = []

    def register(self, fn) -> str:
        data = FunctionRegistrationData(function=fn, serializer=self.serializer)
        function_id = str(uuid.uuid5(uuid.NAMESPACE_OID, data.function_code))
        self.functions[function_id] = data.function_code
        return function_id

    def pack(self, fn, args: tuple, kwargs: dict) -> tuple[uuid.UUID, bytes]:
        function_id = self.register(fn)
        batch = Batch(task_group_id=None, serializer=self.serializer)
        batch.add(function_id, args, kwargs)
        (payload,) = batch.tasks[uuid.UUID(function_id)]
        task_id = uuid.uuid4()
        # What the web service sends the endpoint: the function's buffer, then the arguments'.
        task = Task(task_id=task_id, task_buffer=self.functions[function_id] + payload)
        return task_id, messagepack.pack(task)

    def submit(self, fn, *args, **kwargs) -> ComputeFuture:
        self.submitted.append((fn.__name__, args, kwargs))
        future = ComputeFuture()
        if not self.acknowledge:
            return future
        task_id, packed = self.pack(fn, args, kwargs)
        future.task_id = str(task_id)
        self.by_task[future.task_id] = future
        engine_future = GCFuture(gc_task_id=task_id)
        engine_future.add_done_callback(lambda f: self._deliver(future, f))
        self.started.add(future.task_id)
        self.engine.submit(engine_future, packed, resource_specification={})
        return future

    def _deliver(self, future: ComputeFuture, engine_future: GCFuture) -> None:
        result = messagepack.unpack(engine_future.result())
        if future.cancelled():
            return
        if result.is_error:
            future.set_exception(TaskExecutionFailed(result.data, str(time.time())))
        else:
            future.set_result(self.serializer.deserialize(result.data))


@pytest.fixture(scope="module")
def endpoint_engine(tmp_path_factory):
    """One real endpoint engine per test module: worker processes are spawned, not forked from
    the (threaded) test process."""
    engine = ProcessPoolEngine(max_workers=4, mp_context=multiprocessing.get_context("spawn"))
    engine.start(endpoint_id=ENDPOINT, run_dir=str(tmp_path_factory.mktemp("endpoint")))
    yield engine
    engine.shutdown(block=True)


@pytest.fixture
def loopback(endpoint_engine):
    return LoopbackExecutor(endpoint_engine)


# ---------------------------------------------------------------- the parts, one at a time


def test_the_pilot_function_is_registered_as_source_text():
    code = FunctionRegistrationData(
        function=functions.run_pilot, serializer=source_serializer()
    ).function_code
    (buffer,) = source_serializer().unpack_buffers(code)
    assert buffer.startswith(PureSourceTextInspect.identifier + "run_pilot:def run_pilot(")
    assert "pandaflow" not in buffer.split("\n", 1)[1]  # runs on an endpoint without pandaflow


def test_the_packed_task_unpacks_to_the_function_and_its_arguments(loopback):
    _task_id, packed = loopback.pack(functions.stop_pilot, (), {"key": "k1", "state_dir": "/tmp/x"})
    task = messagepack.unpack(packed)
    fn, args, kwargs = source_serializer().unpack_and_deserialize(task.task_buffer)
    assert (fn.__name__, args, kwargs) == ("stop_pilot", (), {"key": "k1", "state_dir": "/tmp/x"})
    assert fn is not functions.stop_pilot  # rebuilt from its source, as on the endpoint


def test_the_endpoint_engine_runs_a_pilot_command_and_returns_its_exit_code_and_log(loopback, tmp_path):
    future = loopback.submit(
        functions.run_pilot, command="echo started; echo oops >&2; exit 3", key="p1",
        state_dir=str(tmp_path / "state"), poll_s=0.05,
    )  # fmt: skip
    result = future.result(timeout=60)
    assert (result["key"], result["exit_code"], result["stopped"]) == ("p1", 3, None)
    assert result["log_tail"] == "started\noops\n"
    assert (tmp_path / "state" / "p1.log").read_text() == "started\noops\n"
    assert not (tmp_path / "state" / "p1.pid").exists()


def test_stop_pilot_run_on_the_endpoint_makes_a_running_pilot_exit(loopback, tmp_path):
    state = str(tmp_path / "state")
    pilot = loopback.submit(
        functions.run_pilot, command="trap 'echo draining; exit 0' TERM; while :; do sleep 0.05; done",
        key="p2", state_dir=state, poll_s=0.05,
    )  # fmt: skip
    wait_until((tmp_path / "state" / "p2.pid").exists, 30, "the pilot's pid file", interval=0.02)
    assert loopback.submit(functions.stop_pilot, key="p2", state_dir=state).result(timeout=60) == {
        "key": "p2", "running": True
    }  # fmt: skip
    result = pilot.result(timeout=60)
    assert (result["exit_code"], result["stopped"]) == (0, "asked to stop")
    assert "draining" in result["log_tail"]


def test_a_pilot_stopped_before_it_started_never_runs(loopback, tmp_path):
    state = str(tmp_path / "state")
    assert (
        loopback.submit(functions.stop_pilot, key="p3", state_dir=state).result(timeout=60)["running"]
        is False
    )
    result = loopback.submit(
        functions.run_pilot, command=f"touch {tmp_path}/ran", key="p3", state_dir=state, poll_s=0.05
    ).result(timeout=60)
    assert (result["exit_code"], result["stopped"]) == (None, "asked to stop before it started")
    assert not (tmp_path / "ran").exists()


def test_a_pilot_past_its_walltime_is_terminated_then_killed(loopback, tmp_path):
    result = loopback.submit(
        functions.run_pilot, command="trap '' TERM; sleep 30", key="p4", state_dir=str(tmp_path / "s"),
        walltime_s=0.2, grace_s=0.3, poll_s=0.05,
    ).result(timeout=60)  # fmt: skip
    assert (result["stopped"], result["exit_code"]) == ("walltime", -9)
    assert result["duration_s"] < 10


def test_an_exception_on_the_endpoint_comes_back_as_task_execution_failed(loopback, tmp_path):
    future = loopback.submit(functions.run_pilot, command="true", key="p5", state_dir="/proc/no/such/dir")
    with pytest.raises(TaskExecutionFailed, match="FileNotFoundError|PermissionError|OSError"):
        future.result(timeout=60)


@pytest.mark.slow
def test_the_production_engine_runs_and_stops_a_pilot(tmp_path, monkeypatch):
    """GlobusComputeEngine, what endpoints run by default: parsl's HighThroughputExecutor with its
    interchange (started as ``globus-compute-endpoint``) and a worker pool from a LocalProvider."""
    import os
    import shutil
    import sys

    from globus_compute_endpoint.engines import GlobusComputeEngine
    from parsl.providers import LocalProvider

    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    if not shutil.which("globus-compute-endpoint"):
        pytest.skip("the globus-compute-endpoint command is not installed beside this Python")
    engine = GlobusComputeEngine(
        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1), address="127.0.0.1",
        max_workers_per_node=2, heartbeat_period=1, heartbeat_threshold=10,
    )  # fmt: skip
    engine.start(endpoint_id=ENDPOINT, run_dir=str(tmp_path / "endpoint"))
    try:
        loopback = LoopbackExecutor(engine)
        state = str(tmp_path / "state")
        pilot = loopback.submit(
            functions.run_pilot, command="trap 'echo draining; exit 0' TERM; while :; do sleep 0.05; done",
            key="p1", state_dir=state, poll_s=0.05,
        )  # fmt: skip
        wait_until((tmp_path / "state" / "p1.pid").exists, 120, "the pilot's pid file", interval=0.02)
        loopback.submit(functions.stop_pilot, key="p1", state_dir=state).result(timeout=120)
        result = pilot.result(timeout=120)
        assert (result["exit_code"], result["stopped"]) == (0, "asked to stop")
        assert result["log_tail"].endswith("draining\n")  # the whole process group got SIGTERM
    finally:
        engine.shutdown()


def test_a_stop_waits_for_the_pilot_to_drain_even_when_the_shell_does_not_exec_it(tmp_path):
    """dash does not exec a command followed by another: the SIGTERM kills the shell at once while
    the pilot drains, and the stop is over only when the pilot is gone too."""
    import threading

    from pandaflow.providers.globus_compute.functions import run_pilot

    drained = tmp_path / "drained"
    pilot = (
        "import pathlib, signal, sys, time\n"
        "def drain(*_):\n"
        "    time.sleep(1.0)\n"
        f"    pathlib.Path({str(drained)!r}).write_text('reported')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, drain)\n"
        "time.sleep(60)\n"
    )
    script = tmp_path / "pilot.py"
    script.write_text(pilot)
    command = f"{sys.executable} {script}; echo after"  # not the shell's last word: no exec
    state = tmp_path / "state"
    threading.Timer(1.0, lambda: (state / "k.stop").write_text("stop")).start()
    result = run_pilot(command, "k", str(state), poll_s=0.2, grace_s=30)
    assert result["stopped"] == "asked to stop"
    assert drained.read_text() == "reported"  # run_pilot returned after the pilot had drained
