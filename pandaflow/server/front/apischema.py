"""Typed shapes of what the REST API is asked, around the job specification: the query string of
every route and the cancel/retry/hold/release bodies.

Query structs are what :mod:`pandaflow.server.front.api` converts ``request.args`` into (strings
coerced, unknown parameters refused). What each route answers is in
:mod:`pandaflow.server.front.answers`; :mod:`pandaflow.server.front.openapi` builds the OpenAPI
document from both, and from :mod:`pandaflow.spec`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from pandaflow.server.front.queries import DEFAULT_LIMIT, MAX_LIMIT, PILOT_STATES
from pandaflow.server.jobs.states import ALL_STATES
from pandaflow.server.store.schema import WORKER_STATES
from pandaflow.spec import INT_MAX, Id, QueueName, choices, doc

MAX_IDS = 100_000  # job ids in one cancel/retry request

# ---------------------------------------------------------------- query strings

FilterId = Annotated[int, Meta(ge=0, le=INT_MAX)]


class Empty(Struct, kw_only=True, forbid_unknown_fields=True):
    """No fields: the query string of a route that takes no parameters, or an empty body."""


class PageQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    """One page of a list."""

    limit: doc(Annotated[int, Meta(ge=1, le=MAX_LIMIT)], "page size") = DEFAULT_LIMIT
    offset: doc(Annotated[int, Meta(ge=0, le=INT_MAX)], "items to skip") = 0


class TasksQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    workflow_id: doc(FilterId, "only this workflow") | UnsetType = UNSET


class JobsQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    workflow_id: doc(FilterId, "only this workflow") | UnsetType = UNSET
    task_id: doc(FilterId, "only this task") | UnsetType = UNSET
    status: choices(ALL_STATES, "job status") | UnsetType = UNSET
    queue: doc(QueueName, "only this queue") | UnsetType = UNSET
    pilot_id: doc(FilterId, "only jobs (last) dispatched to this pilot") | UnsetType = UNSET
    name: doc(str, "substring of the job name") | UnsetType = UNSET


class LogQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    attempt: doc(Annotated[int, Meta(ge=1, le=INT_MAX)], "attempt number (default: latest)") | UnsetType = (
        UNSET
    )


class PilotsQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    status: doc(Literal[PILOT_STATES], "only pilots in this state") | UnsetType = UNSET  # type: ignore[valid-type]
    queue: doc(QueueName, "only pilots of this queue") | UnsetType = UNSET


class WorkersQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    queue: doc(QueueName, "only workers of this queue") | UnsetType = UNSET
    state: choices(WORKER_STATES, "worker state") | UnsetType = UNSET


class ErrorsQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    workflow_id: doc(FilterId, "only this workflow") | UnsetType = UNSET


# ---------------------------------------------------------------- cancel and retry bodies

JobIds = Annotated[
    list[Id],
    Meta(
        min_length=1,
        max_length=MAX_IDS,
        description="job ids",
        extra={"expected": f"a non-empty list of at most {MAX_IDS} job ids (integers from 1 to {INT_MAX})"},
    ),
]
ExtraAttempts = Annotated[int, Meta(ge=1, le=1000, description="attempts added to each job (default 1)")]


class CancelJobs(Struct, kw_only=True, forbid_unknown_fields=True):
    """Jobs to cancel."""

    ids: JobIds


class RetryJobs(Struct, kw_only=True, forbid_unknown_fields=True):
    """Jobs to retry."""

    ids: JobIds
    extra_attempts: ExtraAttempts = 1


TaskName = Annotated[
    str, Meta(min_length=1, max_length=255, description="only the jobs of this task (label)")
]


class HoldJobs(Struct, kw_only=True, forbid_unknown_fields=True):
    """Jobs to hold."""

    ids: JobIds


class ReleaseJobs(Struct, kw_only=True, forbid_unknown_fields=True):
    """Held jobs to release."""

    ids: JobIds


class TaskOption(Struct, kw_only=True, forbid_unknown_fields=True):
    """Which jobs of a workflow a cancel, hold or release acts on: all, or one task's."""

    task: TaskName | UnsetType = UNSET


class RetryOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """How a workflow's failed and cancelled jobs are retried (all, or one task's)."""

    extra_attempts: ExtraAttempts = 1
    task: TaskName | UnsetType = UNSET


# ---------------------------------------------------------------- loops

LoopName = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="the loop's name: 1-100 letters, digits, '.', '_' or '-'",
        extra={"expected": "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"},
    ),
]
TrialNumber = Annotated[int, Meta(ge=0, le=INT_MAX, description="the trial's number in its loop")]
FiniteValue = Annotated[float, Meta(description="the objective's value (a finite number)")]


class LoopsQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    pass


class TrialsQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    state: doc(Literal["running", "complete", "failed"], "trial state") | UnsetType = UNSET
    order: doc(Literal["number", "value"], "by number, or best value first") = "number"


class OpenLoop(Struct, kw_only=True, forbid_unknown_fields=True):
    """A loop to create, or to resume when one of the same name has the same settings."""

    name: LoopName
    kind: doc(Literal["hpo", "active_learning"], "what the loop searches")
    config: doc(dict[str, Any], "the settings a resumed loop must repeat (space, sampler, ...)")
    budget: doc(Annotated[int, Meta(ge=1, le=INT_MAX)], "trials (hpo) or evaluations (active learning)")
    direction: doc(Literal["minimize", "maximize", ""], "hpo: the objective's direction") = ""
    workflow: doc(Annotated[str, Meta(max_length=255)], "the workflow its jobs are recorded under") = ""
    owner: doc(Annotated[str, Meta(max_length=128)], "who runs it (free text)") = ""


class TrialRecord(Struct, kw_only=True, forbid_unknown_fields=True):
    """A trial asked (with its params) or told (its state and value)."""

    number: TrialNumber
    params: doc(dict[str, Any], "the point evaluated (required the first time)") | UnsetType = UNSET
    iteration: (
        doc(Annotated[int, Meta(ge=0, le=INT_MAX)], "its batch: the task its job is in") | UnsetType
    ) = UNSET
    state: doc(Literal["running", "complete", "failed"], "trial state") | UnsetType = UNSET
    value: FiniteValue | None | UnsetType = UNSET
    error: doc(Annotated[str, Meta(max_length=20000)], "why it failed") | UnsetType = UNSET
    attempts: doc(Annotated[int, Meta(ge=1, le=1000)], "evaluations so far") | UnsetType = UNSET
    job_uid: doc(Annotated[str, Meta(max_length=96)], "the job of its latest evaluation") | UnsetType = UNSET


class RecordTrials(Struct, kw_only=True, forbid_unknown_fields=True):
    """Trials to record (all or none)."""

    trials: Annotated[list[TrialRecord], Meta(min_length=1, max_length=10000)]


class EndLoop(Struct, kw_only=True, forbid_unknown_fields=True):
    """How a loop ended."""

    status: doc(Literal["finished", "failed", "stopped"], "how it ended")
    message: doc(Annotated[str, Meta(max_length=20000)], "why") = ""
    summary: doc(dict[str, Any], "the driver's summary (best point, accuracy, ...)") | UnsetType = UNSET
