"""Typed shapes of what each REST route answers.

They describe the dicts of :mod:`pandaflow.server.front.queries`: the API sends those dicts as they
are, and a test converts them into these structs, so the two cannot drift.
:mod:`pandaflow.server.front.openapi` puts them in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from pandaflow.server.front.queries import BPS_COLUMNS, BPS_RUN_STATES, DERIVED_STATES, PILOT_STATES
from pandaflow.server.jobs.states import ALL_STATES
from pandaflow.server.store.schema import WORKER_STATES
from pandaflow.spec import doc

Time = Annotated[str, Meta(description="ISO-8601 UTC time", extra_json_schema={"format": "date-time"})] | None
Seconds = float | None
JobState = Literal[ALL_STATES]  # type: ignore[valid-type]
Derived = Annotated[
    Literal[DERIVED_STATES],  # type: ignore[valid-type]
    Meta(
        description="derived from the job counts: running while any job has not ended; finished if all "
        "finished; subfinished if some finished; cancelled if all were cancelled; failed otherwise; empty "
        "without jobs"
    ),
]
SiteShares = (
    Annotated[
        dict[str, float],
        Meta(
            description="the sites the workflow's jobs are spread over, with shares summing to 1 (one site: "
            "pinned); null: any site"
        ),
    ]
    | None
)

Counts = msgspec.defstruct(
    "Counts",
    [(state, int) for state in ALL_STATES],
    kw_only=True,
    namespace={"__doc__": "Number of jobs in each state.", "__module__": __name__},
)
BpsCounts = msgspec.defstruct(
    "BpsCounts",
    [(column, int) for column in (*BPS_COLUMNS, "EXPECTED")],
    kw_only=True,
    namespace={
        "__doc__": "Jobs in each BPS state (WmsStates names); EXPECTED: all jobs of the label.",
        "__module__": __name__,
    },
)
PilotCounts = msgspec.defstruct(
    "PilotCounts",
    [(state, int) for state in PILOT_STATES],
    kw_only=True,
    namespace={"__doc__": "Number of pilots in each state.", "__module__": __name__},
)


class Error(Struct, kw_only=True):
    """Every error answer: what was wrong and what to do."""

    error: str
    problems: doc(list[str], "every refused job (submissions)") | UnsetType = UNSET


class Info(Struct, kw_only=True):
    """The server's version and the ZeroMQ endpoint pilots connect to."""

    version: str
    zmq: doc(str | None, "ZeroMQ endpoint of pilots")
    epoch: str | None


class _WorkflowHead(Struct, kw_only=True):
    """What every answer about a workflow starts with."""

    id: int
    name: str
    owner: str
    client: str | None
    sites: SiteShares
    created_at: Time
    updated_at: Time
    status: Derived
    n_jobs: int


class Workflow(_WorkflowHead, kw_only=True):
    """A workflow with its job counts."""

    counts: Counts  # type: ignore[valid-type]


class Task(Struct, kw_only=True):
    """A task (pipeline label) of a workflow with its job counts."""

    id: int
    workflow_id: int
    name: str
    priority: int
    created_at: Time
    status: Derived
    n_jobs: int
    counts: Counts  # type: ignore[valid-type]


class WorkflowDetail(Workflow, kw_only=True):
    """A workflow with its first 1000 tasks."""

    tasks: list[Task]


class JobInfo(Struct, kw_only=True):
    """A job as lists show it."""

    id: int
    uid: doc(str, "client key; resubmitting a uid is idempotent")
    name: str
    workflow_id: int
    task_id: int
    task: doc(str, "task name")
    kind: Literal["python", "shell"]
    status: JobState
    panda_status: doc(str, "the equivalent PanDA job status")
    queue: str | None
    priority: int
    cores: int
    memory_mb: int | None
    disk_mb: int | None
    walltime_s: Seconds
    attempt: doc(int, "dispatches so far")
    max_attempts: int
    pilot_id: int | None
    worker_id: doc(int | None, "push queues: the worker the job is (or was) reserved for")
    error_code: int
    error_name: str
    error_diag: str
    exit_code: int | None
    max_rss_mb: float | None
    max_pss_mb: float | None
    created_at: Time
    updated_at: Time
    dispatched_at: Time
    started_at: Time
    ended_at: Time
    duration_s: doc(Seconds, "ended_at - started_at, seconds")


class Attempt(Struct, kw_only=True):
    """One ended attempt of a job."""

    attempt: int
    status: JobState
    pilot_id: int | None
    pilot: doc(str | None, "pilot name")
    queue: str | None
    error_code: int
    error_name: str
    error_description: str
    error_diag: str
    exit_code: int | None
    dispatched_at: Time
    started_at: Time
    ended_at: Time
    duration_s: Seconds
    max_rss_mb: float | None
    max_pss_mb: float | None
    memory_samples: doc(list[Annotated[list[float], Meta(min_length=3, max_length=3)]],
                           "[time, rss MB, pss MB] samples")  # fmt: skip
    memory_mb: doc(int | None, "the memory the attempt asked for, MB")
    has_log: bool


class JobDetail(JobInfo, kw_only=True):
    """A job with its command, environment, output tail and attempt history (no payload bytes)."""

    error_description: str
    bps_status: str
    client: str | None
    command: str | None
    env: dict[str, str] | None
    stdout_tail: str
    has_result: bool
    result_is_exception: bool
    attempts: list[Attempt]


class Log(Struct, kw_only=True):
    """The log of one attempt of a job."""

    job_id: int
    attempt: int
    source: doc(Literal["log", "tail", "none"], "log: uploaded by the pilot; tail: stdout tail only; none")
    text: str


class Pilot(Struct, kw_only=True):
    """A pilot with the number of jobs it holds now."""

    id: int
    name: str
    queue: str
    status: Literal[PILOT_STATES]  # type: ignore[valid-type]
    host: str
    pid: int | None
    cores: int
    memory_mb: int | None
    workdir: str
    version: str
    jobs_held: doc(int, "dispatched or running jobs on it now")
    n_done: int
    n_failed: int
    registered_at: Time
    last_heartbeat_at: Time
    heartbeat_age_s: Seconds
    ended_at: Time


class HarvesterStatus(Struct, kw_only=True):
    """What a harvester saw and did on a queue in its last cycle."""

    queue: str
    harvester: doc(str, "its name (--name, the host name by default)")
    cycle_at: doc(Time, "end of its last cycle on the queue")
    ready_jobs: doc(int, "demand: ready jobs its pilots can take")
    ready_cores: doc(int, "demand in job slots")
    unfit_jobs: doc(int, "ready jobs larger than the queue's pilots")
    idle_slots: doc(int, "supply: free slots of pilots and of workers")
    queued_workers: doc(int, "workers waiting in the provider")
    running_workers: int
    action: doc(str, "what the last cycle did, and why")
    error: doc(str, "the last provider failure ('' once it works again)")
    error_at: doc(Time, "when the last failure was seen")


class Queue(Struct, kw_only=True):
    """A queue: its description as the server loaded it (harvester keys included), live counts of
    jobs and pilots, and each harvester's last cycle."""

    name: str
    site: str | UnsetType = UNSET
    min_memory_mb: int | UnsetType = UNSET
    max_memory_mb: int | UnsetType = UNSET
    cores: int | UnsetType = UNSET
    max_walltime_s: float | UnsetType = UNSET
    status: Literal["online", "offline"] | UnsetType = UNSET
    mode: Literal["pull", "push"] | UnsetType = UNSET
    brokerage: bool | UnsetType = UNSET
    memory_multiplier: (
        doc(float, "out-of-memory escalation: the next attempt asks this many times as much") | UnsetType
    ) = UNSET
    description: str | UnsetType = UNSET
    ready_jobs: int
    reserved_jobs: doc(int, "push queues: jobs reserved for a worker")
    dispatched_jobs: int
    running_jobs: int
    active_pilots: int
    updated_at: Time
    harvesters: doc(list[HarvesterStatus], "each harvester serving the queue (empty: none)")


class Worker(Struct, kw_only=True):
    """A pilot job a harvester submitted."""

    id: doc(int, "the pilot's --worker-id")
    queue: str
    state: Literal[WORKER_STATES]  # type: ignore[valid-type]
    batch_state: doc(str | None, "the provider's last word (a parsl JobState name)")
    provider: str
    provider_job_id: doc(str | None, "e.g. the Slurm job id; null until accepted")
    harvester: str
    cores: int
    memory_mb: int | None
    pilot_id: doc(int | None, "the pilot that registered from it")
    pilot: doc(str | None, "that pilot's name")
    error: str
    submitted_at: Time
    started_at: Time
    ended_at: Time
    age_s: doc(float, "seconds from submission to its end (or to now)")


class Page(Struct, kw_only=True):
    total: doc(int, "items matching, over all pages")
    limit: int
    offset: int


class WorkflowPage(Page, kw_only=True):
    workflows: list[Workflow]


class TaskPage(Page, kw_only=True):
    tasks: list[Task]


class JobPage(Page, kw_only=True):
    jobs: list[JobInfo]


class PilotPage(Page, kw_only=True):
    pilots: list[Pilot]


class WorkerPage(Page, kw_only=True):
    workers: list[Worker]
    queues: doc(list[HarvesterStatus], "the harvesters' status of the queue filtered on (of every queue)")


class QueueList(Struct, kw_only=True):
    queues: list[Queue]


class Summary(Struct, kw_only=True):
    """Jobs by state, pilots by state and the queues."""

    at: Time
    workflows: int
    n_jobs: int
    jobs: Counts  # type: ignore[valid-type]
    pilots: PilotCounts  # type: ignore[valid-type]
    queues: list[Queue]


class ErrorGroup(Struct, kw_only=True):
    workflow_id: int
    task_id: int
    task: str
    error_code: int
    error_name: str
    description: str
    jobs: doc(int, "jobs whose latest attempt ended with this code")
    attempts: doc(int, "attempts that ended with this code")
    example_diag: str


class ErrorSummary(Struct, kw_only=True):
    """Errors grouped by task and error code, most frequent first."""

    workflow_id: int | None
    errors: list[ErrorGroup]


class ErrorCode(Struct, kw_only=True):
    code: int
    name: str
    retryable: bool
    description: str


class ErrorCodes(Struct, kw_only=True):
    error_codes: list[ErrorCode]


class Submitted(Struct, kw_only=True):
    """What a submission stored."""

    workflow_id: int
    job_ids: doc(dict[str, int], "uid -> job id")
    duplicates: doc(list[str], "uids stored by an earlier request")
    sites: (
        doc(dict[str, int], "workflows with sites only: jobs this request stored at each site") | UnsetType
    ) = UNSET


class Skipped(Struct, kw_only=True):
    id: int
    status: JobState
    reason: str


class ControlResult(Struct, kw_only=True):
    """What a cancel, retry, hold or release changed."""

    action: Literal["cancel", "retry", "hold", "release"]
    changed: doc(list[int], "ids of jobs that changed state")
    skipped: doc(list[Skipped], "jobs named but left as they were, and why")


class JobEvent(Struct, kw_only=True):
    """One change of a job's state (the first: its submission)."""

    at: Time
    attempt: doc(int, "the attempt the event belongs to (0: none yet)")
    from_: doc(JobState | None, "the state it left (null: the submission)") = msgspec.field(name="from")
    to: doc(JobState, "the state it entered")
    event: doc(str, "the event of the transitions table (submit: the job was stored)")
    pilot_id: int | None
    pilot: str | None
    reason: str


class JobEvents(Struct, kw_only=True):
    """A job's timeline: its submission, then every change of its state, oldest first."""

    job_id: int
    status: JobState
    events: list[JobEvent]


class ReportLabel(Struct, kw_only=True):
    label: str
    task_id: int
    counts: BpsCounts  # type: ignore[valid-type]


class Report(_WorkflowHead, kw_only=True):
    """A workflow's jobs by task (pipeline label) and BPS state, as ``bps report`` shows them."""

    bps_state: doc(Literal[tuple(sorted(set(BPS_RUN_STATES.values())))], "the run's state as bps names it")  # type: ignore[misc]
    percent_succeeded: doc(int | None, "integer percentage of jobs that succeeded")
    columns: doc(list[str], "the columns of the table, in order")
    total: BpsCounts  # type: ignore[valid-type]
    labels: doc(list[ReportLabel], "one row per task (pipeline label), in submission order")


# ---------------------------------------------------------------- loops

TrialState = Literal["running", "complete", "failed"]


class Trial(Struct, kw_only=True):
    """One evaluation of a loop: the point, and what it gave."""

    number: int
    iteration: doc(int, "its batch: the task its job is in")
    params: dict[str, Any]
    state: TrialState
    value: float | None
    error: str
    attempts: doc(int, "evaluations (the loop's own retries of a failed one)")
    job_uid: doc(str | None, "the job of its latest evaluation")
    created_at: Time
    ended_at: Time


class Loop(Struct, kw_only=True):
    """A loop with its progress and best trial so far."""

    name: str
    kind: Literal["hpo", "active_learning"]
    owner: str
    status: Literal["running", "finished", "failed", "stopped"]
    message: str
    direction: Literal["minimize", "maximize"] | None
    budget: int
    done: doc(int, "trials that ended (complete or failed)")
    progress: doc(float, "done / budget, from 0 to 1")
    counts: dict[str, int]
    best: Trial | None
    workflow: str
    workflow_id: int | None
    config: dict[str, Any]
    summary: dict[str, Any] | None
    created_at: Time
    updated_at: Time
    ended_at: Time


class LoopPage(Page, kw_only=True):
    loops: list[Loop]


class TrialPage(Page, kw_only=True):
    trials: list[Trial]


class TrialsRecorded(Struct, kw_only=True):
    numbers: list[int]
