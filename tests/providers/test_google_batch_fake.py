"""A fake of ``google.cloud.batch_v1.BatchServiceClient`` for offline tests, and the tests that keep
it honest: the same method signatures as the real client, requests parsed into the real
protobuf messages, and refusals where the Batch service would refuse (ids, labels, duplicates).

Jobs never run by themselves: a test plays the Batch service with :meth:`FakeBatchClient.move`.
"""

from __future__ import annotations

import inspect
import itertools
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import batch_v1
from google.protobuf import timestamp_pb2

PARENT = re.compile(r"^projects/[^/]+/locations/[^/]+$")
JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
SECRET_VERSION = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")
State = batch_v1.JobStatus.State
_DEFAULT = object()


@dataclass
class Call:
    method: str
    request: Any
    timeout: Any


class FakeOperation:
    """What ``delete_job`` returns (a long-running operation); nobody waits on it here."""

    def __init__(self, name: str) -> None:
        self.name = name

    def done(self) -> bool:
        return True


class FakeBatchClient:
    """Keeps jobs in memory as real ``batch_v1.Job`` messages and records every call."""

    def __init__(self) -> None:
        self.jobs: dict[str, batch_v1.Job] = {}
        self.calls: list[Call] = []
        self._request_ids: dict[str, str] = {}
        self._failures: dict[str, list[Exception]] = {}
        self._clock = itertools.count(1_800_000_000)

    # ---------------------------------------------------------------- the client's methods
    def create_job(
        self,
        request=None,
        *,
        parent=None,
        job=None,
        job_id=None,
        retry=_DEFAULT,
        timeout=_DEFAULT,
        metadata=(),
    ) -> batch_v1.Job:
        request = batch_v1.CreateJobRequest(request) if request is not None else batch_v1.CreateJobRequest()
        if parent is not None:
            request.parent = parent
        if job is not None:
            request.job = job
        if job_id is not None:
            request.job_id = job_id
        self._record("create_job", request, timeout)
        if request.request_id and request.request_id in self._request_ids:
            return batch_v1.Job(self.jobs[self._request_ids[request.request_id]])
        if not PARENT.match(request.parent):
            raise gexc.InvalidArgument(f"parent {request.parent!r} is not projects/*/locations/*")
        if not JOB_ID.match(request.job_id):
            raise gexc.InvalidArgument(f"job_id {request.job_id!r} does not match {JOB_ID.pattern}")
        created = batch_v1.Job(request.job)
        if len(created.task_groups) != 1:
            raise gexc.InvalidArgument("exactly one task group is supported")
        if not created.task_groups[0].task_spec.runnables:
            raise gexc.InvalidArgument("a task needs at least one runnable")
        labels = {**created.labels, **created.allocation_policy.labels}
        for key, value in labels.items():
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
                raise gexc.InvalidArgument(f"invalid label {key}={value}")
        for name in created.task_groups[0].task_spec.environment.secret_variables.values():
            if not SECRET_VERSION.match(name):
                raise gexc.InvalidArgument(f"secret variable {name!r} is not a secret version name")
        name = f"{request.parent}/jobs/{request.job_id}"
        if name in self.jobs:
            raise gexc.AlreadyExists(f"job {name} already exists")
        created.name, created.uid = name, uuid.uuid4().hex[:16]
        created.create_time = timestamp_pb2.Timestamp(seconds=next(self._clock))
        created.status = batch_v1.JobStatus(state=State.QUEUED)
        self.jobs[name] = created
        if request.request_id:
            self._request_ids[request.request_id] = name
        return batch_v1.Job(created)

    def get_job(
        self, request=None, *, name=None, retry=_DEFAULT, timeout=_DEFAULT, metadata=()
    ) -> batch_v1.Job:
        request = (
            batch_v1.GetJobRequest(request) if request is not None else batch_v1.GetJobRequest(name=name)
        )
        self._record("get_job", request, timeout)
        if request.name not in self.jobs:
            raise gexc.NotFound(f"Job {request.name} not found")
        return batch_v1.Job(self.jobs[request.name])

    def list_jobs(self, request=None, *, parent=None, retry=_DEFAULT, timeout=_DEFAULT, metadata=()):
        request = (
            batch_v1.ListJobsRequest(request)
            if request is not None
            else batch_v1.ListJobsRequest(parent=parent)
        )
        self._record("list_jobs", request, timeout)
        return iter([batch_v1.Job(j) for n, j in self.jobs.items() if n.startswith(request.parent + "/")])

    def delete_job(
        self, request=None, *, name=None, retry=_DEFAULT, timeout=_DEFAULT, metadata=()
    ) -> FakeOperation:
        request = (
            batch_v1.DeleteJobRequest(request)
            if request is not None
            else batch_v1.DeleteJobRequest(name=name)
        )
        self._record("delete_job", request, timeout)
        if request.name not in self.jobs:
            raise gexc.NotFound(f"Job {request.name} not found")
        self.jobs[request.name].status.state = State.DELETION_IN_PROGRESS
        return FakeOperation(f"{request.name}/operations/delete")

    # ---------------------------------------------------------------- playing the service
    def fail_next(self, method: str, error: Exception) -> None:
        """The next call of ``method`` raises ``error`` (an API refusal, an outage)."""
        self._failures.setdefault(method, []).append(error)

    def move(self, name: str, state: str, exit_code: int | None = None, description: str = "") -> None:
        """Put a job in ``state`` (a ``JobStatus.State`` name), with a status event like Batch's."""
        job = self.jobs[name]
        previous = job.status.state.name
        job.status.state = State[state]
        event = batch_v1.StatusEvent(
            type_="STATUS_CHANGED",
            description=description or f"Job state is set from {previous} to {state} for job {name}.",
        )
        if exit_code is not None:
            event.task_execution = batch_v1.TaskExecution(exit_code=exit_code)
        job.status.status_events.append(event)

    def settle(self) -> None:
        """Finish deletions under way: those jobs are gone."""
        for name in [n for n, j in self.jobs.items() if j.status.state == State.DELETION_IN_PROGRESS]:
            del self.jobs[name]

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def _record(self, method: str, request: Any, timeout: Any) -> None:
        self.calls.append(Call(method, request, timeout))
        if self._failures.get(method):
            raise self._failures[method].pop(0)


# ---------------------------------------------------------------- keeping the fake honest


def _parameters(fn) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("method", ["create_job", "get_job", "list_jobs", "delete_job"])
def test_the_fake_has_the_real_clients_method_signatures(method):
    real = getattr(batch_v1.BatchServiceClient, method)
    assert _parameters(getattr(FakeBatchClient, method)) == _parameters(real)


def test_the_fake_refuses_job_ids_that_batch_refuses():
    job = batch_v1.Job(
        task_groups=[batch_v1.TaskGroup(task_spec=batch_v1.TaskSpec(runnables=[batch_v1.Runnable()]))]
    )
    with pytest.raises(gexc.InvalidArgument, match="job_id"):
        FakeBatchClient().create_job(parent="projects/p/locations/r", job=job, job_id="Pilot_1")


def test_the_fake_returns_the_same_job_for_a_repeated_request_id():
    fake = FakeBatchClient()
    job = batch_v1.Job(
        task_groups=[batch_v1.TaskGroup(task_spec=batch_v1.TaskSpec(runnables=[batch_v1.Runnable()]))]
    )
    request = batch_v1.CreateJobRequest(parent="projects/p/locations/r", job_id="a1", job=job, request_id="x")
    assert fake.create_job(request=request).name == fake.create_job(request=request).name
    assert list(fake.jobs) == ["projects/p/locations/r/jobs/a1"]
