"""An endpoint engine in this process, standing where the Globus Compute web service and its
endpoint would: :class:`OfflineExecutor` takes the place of ``globus_compute_sdk.Executor`` for
``GlobusComputeProvider`` (its ``executor`` attribute), so the harvester's pilots run through a
real endpoint engine without any network.

What happens to each function is what happens between the SDK and an endpoint, with their own
code: the function is serialized as the SDK registers it (``FunctionRegistrationData``, source
text), its arguments packed as the SDK's ``Batch`` packs them, both wrapped in the ``messagepack``
``Task`` the web service hands an endpoint; the endpoint's engine (``GlobusComputeEngine``: parsl's
HighThroughputExecutor and its worker pool) unpacks and runs it, and its packed ``Result`` is
unpacked and deserialized as the SDK's result watcher does. Only the web service's own work is
absent: login, the function registry, the task queues, and the task states it reports, which
:class:`OfflineClient` answers from the futures here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Task
from globus_compute_endpoint.engines.base import GCFuture, GlobusComputeEngineBase
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk.asynchronous.compute_future import ComputeFuture
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.sdk.client import FunctionRegistrationData

from pandaflow.providers.globus_compute import source_serializer


class OfflineClient:
    """``Client.get_batch_result`` for the tasks of an :class:`OfflineExecutor`: what the web service
    would say about each (a failed task is left out, as the SDK's client leaves it out)."""

    def __init__(self, executor: OfflineExecutor) -> None:
        self.executor = executor

    def get_batch_result(self, task_id_list: list[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for task_id in map(str, task_id_list):
            future = self.executor.futures.get(task_id)
            if future is None:
                continue
            if not future.done():
                found[task_id] = {"pending": True, "status": "running"}
            elif future.exception() is None:
                found[task_id] = {"pending": False, "status": "success", "result": future.result()}
        return found


class OfflineExecutor:
    """``Executor.submit(fn, *args, **kwargs)`` run on ``engine`` (started by the caller)."""

    def __init__(self, engine: GlobusComputeEngineBase) -> None:
        self.engine = engine
        self.serializer = source_serializer()  # as GlobusComputeProvider sets on the SDK's Executor
        self.client = OfflineClient(self)
        self.futures: dict[str, ComputeFuture] = {}  # by task id
        self.submitted: list[tuple[str, str]] = []  # (function name, task id), in order

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ComputeFuture:
        function = FunctionRegistrationData(function=fn, serializer=self.serializer).function_code
        batch = Batch(task_group_id=None, serializer=self.serializer)
        function_id = str(uuid.uuid4())
        batch.add(function_id, args, kwargs)
        (arguments,) = batch.tasks[uuid.UUID(function_id)]
        task_id = uuid.uuid4()
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=function + arguments))

        future = ComputeFuture()
        future.task_id = str(task_id)
        self.futures[future.task_id] = future
        self.submitted.append((fn.__name__, future.task_id))
        done = GCFuture(gc_task_id=task_id)
        done.add_done_callback(lambda f: self._deliver(future, f))
        self.engine.submit(done, packed, resource_specification={})
        return future

    def _deliver(self, future: ComputeFuture, done: GCFuture) -> None:
        try:
            result = messagepack.unpack(done.result())
        except Exception as exc:  # the engine lost the task (its worker died)
            future.set_exception(exc)
            return
        if result.is_error:
            future.set_exception(TaskExecutionFailed(result.data, str(time.time())))
        else:
            future.set_result(self.serializer.deserialize(result.data))
