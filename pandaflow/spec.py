"""The job specification: one typed definition of what a client may submit.

Every door into pandaflow checks jobs against the structs of this module, so that the REST API,
DAG files, the executor's ``resource_specification`` and the OpenAPI document cannot disagree
about a field:

* :class:`Job`, one job; its base :class:`JobDefaults` holds the fields a DAG file's task may
  set for all of its jobs. :class:`SubmitRequest` and :class:`AppendRequest` are the bodies of
  ``POST /api/v1/workflows`` and ``POST /api/v1/workflows/<id>/jobs``, decoded from the raw
  body and validated in one step (:func:`decode_submission`); a job arriving as a plain dict
  (ZeroMQ, msgpack) goes through :func:`job_from`.
* :class:`ResourceSpecification`, a parsl ``resource_specification``, with its mapping onto
  job fields (:func:`resource_fields`).
* every refusal says the field path, what was expected and what was given
  (``jobs[3].cores: expected an integer of at least 1, got 2.5``; :mod:`pandaflow.problems`).

What a field-by-field type cannot say (a python job needs a ``buffer``) is checked by
:func:`job_kind` and stated for the OpenAPI document in :data:`SCHEMA_RULES`, side by side.
Over JSON the ``buffer`` of a python job is base64 text; over msgpack it is raw bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from pandaflow.problems import explain, field_problems, key_path

INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # the database's integer columns are 32-bit
MAX_ATTEMPTS_DEFAULT = 3
DEFAULT_TASK = "default"
#: base64 text exactly as msgspec decodes it into ``bytes`` (standard alphabet, padded).
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def doc(tp: Any, description: str) -> Any:
    """``tp`` with a description for the OpenAPI document."""
    return Annotated[tp, Meta(description=description)]


def choices(values: tuple[str, ...], noun: str) -> Any:
    """A string of one or more of ``values`` separated by commas (a query filter)."""
    alternatives = "|".join(re.escape(v) for v in values)
    return Annotated[
        str,
        Meta(
            pattern=f"^({alternatives})(,({alternatives}))*$",
            description=f"one or more of {', '.join(values)}, separated by commas",
            extra={"choices": values, "noun": noun},
        ),
    ]


# ---------------------------------------------------------------- field types

Id = Annotated[int, Meta(ge=1, le=INT_MAX, extra={"expected": f"an id (an integer from 1 to {INT_MAX})"})]
Cores = Annotated[int, Meta(ge=1, le=INT_MAX, description="cores the job needs (default 1)")]
MemoryMB = Annotated[
    int, Meta(ge=0, le=INT_MAX, description="memory the job needs, MB (brokerage picks a queue that has it)")
]
DiskMB = Annotated[int, Meta(ge=0, le=INT_MAX, description="scratch disk the job needs, MB")]
Walltime = Annotated[
    float,
    Meta(
        gt=0, description="time limit of the job, seconds", extra={"expected": "a positive number of seconds"}
    ),
]
Priority = Annotated[int, Meta(ge=INT_MIN, le=INT_MAX, description="higher runs first (default 0)")]
Attempts = Annotated[
    int,
    Meta(ge=1, le=INT_MAX, description=f"attempts before it fails for good (default {MAX_ATTEMPTS_DEFAULT})"),
]
Multiplier = Annotated[
    float,
    Meta(
        ge=1,
        le=100,
        description="after an out-of-memory kill the next attempt asks memory_mb times this (re-brokered "
        "to a queue that holds it); 1 turns the growth off",
    ),
]
MemoryCap = Annotated[
    int, Meta(ge=1, le=INT_MAX, description="cap of the grown memory request, MB (not below memory_mb)")
]
ExitCode = Annotated[int, Meta(ge=INT_MIN, le=INT_MAX)]
ExitCodes = Annotated[
    list[ExitCode],
    Meta(description="exit codes never retried", extra={"expected": "a list of exit codes (integers)"}),
]
QueueName = Annotated[
    str, Meta(min_length=1, max_length=128, description="the queue to run on (default: chosen by brokerage)")
]
NAME_MAX = 255  # job, task and workflow names (column sizes)
PRODUCT_MAX = 500  # data product names (and parents, which are job names)
Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=PRODUCT_MAX,
        extra={"expected": f"a non-empty string of at most {PRODUCT_MAX} characters"},
    ),
]
Names = Annotated[
    list[Name],
    Meta(extra={"expected": f"a list of names (non-empty strings of at most {PRODUCT_MAX} characters)"}),
]
Command = Annotated[
    str,
    Meta(
        pattern=r"\S",
        description="shell command line (shell jobs)",
        extra={"expected": "a non-empty command string"},
    ),
]
Env = Annotated[
    dict[str, str],
    Meta(description="environment of the payload", extra={"expected": "a mapping of names to strings"}),
]
Payload = Annotated[
    bytes,
    Meta(
        description="the parsl pack_apply_message bytes of a python job: base64 text over JSON, raw bytes "
        "over msgpack",
        extra_json_schema={"pattern": BASE64},
        extra={"expected": "base64 text (the payload bytes, base64-encoded)"},
    ),
]
Always = Annotated[
    bool,
    Meta(
        description="run once every input and parent has ended, whatever the outcome: inputs that can "
        "never exist are skipped instead of pruning the job (a final or clean-up job; bps finalJob with "
        "whenRun ALWAYS)"
    ),
]
# Shares are weights: bounded so that normalising them can neither overflow nor round one to zero.
SHARE_MIN, SHARE_MAX = 1e-6, 1e6
Share = Annotated[
    float,
    Meta(ge=SHARE_MIN, le=SHARE_MAX, extra={"expected": "a share (a number from 0.000001 to 1000000)"}),
]
SiteName = Annotated[str, Meta(min_length=1, max_length=128, extra={"expected": "the name of a site"})]


# ---------------------------------------------------------------- jobs and submissions


class JobDefaults(Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """What a job runs and asks for: the fields a DAG file's task may set for all its jobs."""

    command: Command | None = None
    env: Env | None = None
    cores: Cores | None = None
    memory_mb: MemoryMB | None = None
    disk_mb: DiskMB | None = None
    walltime_s: Walltime | None = None
    priority: Priority | None = None
    queue: QueueName | None = None
    max_attempts: Attempts | None = None
    memory_multiplier: Multiplier | None = None
    memory_max_mb: MemoryCap | None = None
    retry_unless_exit: ExitCodes | None = None
    always: Always | None = None


Uid = Annotated[
    str, Meta(max_length=96, description="client key (default: generated); resubmitting a uid is idempotent")
]
JobName = Annotated[
    str,
    Meta(max_length=NAME_MAX, description="the job's name (needed by jobs with inputs, outputs or parents)"),
]
TaskName = Annotated[str, Meta(max_length=NAME_MAX, description=f"the job's task (default {DEFAULT_TASK!r})")]
Kind = Annotated[
    Literal["shell", "python"], Meta(description="default: shell if 'command' is given, else python")
]
Inputs = Annotated[
    Names,
    Meta(
        description="data products the job reads: it stays pending until all are available (written by "
        "a finished job, or declared in 'available')"
    ),
]
Outputs = Annotated[Names, Meta(description="data products the job writes (one writer per product)")]
Parents = Annotated[Names, Meta(description="names of jobs of the same submission that must finish first")]


class Job(JobDefaults, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One job of a submission. A shell job gives 'command'; a python job gives 'buffer'."""

    uid: Uid | None = None
    name: JobName | None = None
    task: TaskName | None = None
    kind: Kind | None = None
    buffer: Payload | None = None
    inputs: Inputs | None = None
    outputs: Outputs | None = None
    parents: Parents | None = None

    _renamed = {"buffer_b64": "'buffer' (the same base64 text)"}  # for explain(): names it had before


Jobs = Annotated[
    list[Job],
    Meta(
        min_length=1,
        description="the jobs, in any order",
        extra={"expected": "a non-empty list of job objects"},
    ),
]
Available = Annotated[
    Names,
    Meta(description="data products that exist already (inputs nobody in the workflow writes)"),
]


class AppendRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """Jobs added to a workflow: a large DAG sent in pieces, each stored all or nothing."""

    jobs: Jobs
    available: Available = []


class SubmitRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """A workflow and its jobs, stored all or nothing."""

    name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=NAME_MAX,
            pattern=r"\S",
            description="the workflow's name",
            extra={"expected": "a non-empty string (the name)"},
        ),
    ]
    jobs: Jobs
    owner: Annotated[str, Meta(max_length=128, description="who submitted it (free text)")] = ""
    available: Available = []
    sites: (
        Annotated[
            dict[SiteName, Share],
            Meta(
                min_length=1,
                description="spread the jobs over sites by share: site name -> share (weights, normalised: "
                '{"FrDF": 0.5, "UKDF": 0.25, "USDF": 0.25} and {"FrDF": 2, "UKDF": 1, "USDF": 1} mean the '
                "same). Each job shape goes to the sites that have a queue able to hold it, shares "
                "renormalised among them, then to the tightest queue there. Not with 'site'",
                extra={"expected": "a mapping of site names to shares (e.g. FrDF: 0.5)"},
            ),
        ]
        | UnsetType
    ) = UNSET
    site: Annotated[SiteName, Meta(description="pin the jobs to this site. Not with 'sites'")] | UnsetType = (
        UNSET
    )


def _runs(kind: str, needs: str) -> dict[str, Any]:
    return {"required": [needs], "properties": {needs: {"type": "string"}, "kind": {"enum": [kind, None]}}}


#: What the structs' types cannot say, for the OpenAPI document (the same rules as :func:`job_kind`
#: and :func:`pandaflow.server.jobs.sites.parse`), merged into each struct's schema. Written as flat
#: alternatives (no if/then/not) that say the same: schema-driven generators handle them fast.
SCHEMA_RULES: dict[str, dict[str, Any]] = {
    # python (given, or implied without 'command') needs 'buffer'; shell (given, or implied) 'command'
    "Job": {"anyOf": [_runs("python", "buffer"), _runs("shell", "command")]},
    # not both 'site' and 'sites'
    "SubmitRequest": {"anyOf": [{"properties": {"site": False}}, {"properties": {"sites": False}}]},
}


def job_kind(job: Job) -> tuple[str, str]:
    """The job's kind and, when the job cannot run, why (else ``""``)."""
    kind = job.kind
    if kind is None:
        kind = "shell" if job.command is not None else "python"
    if kind == "python":
        if job.buffer is None:
            return kind, "a python job needs 'buffer' (parsl pack_apply_message bytes; base64 over JSON)"
    elif job.command is None:
        return kind, "a shell job needs a non-empty 'command' string"
    return kind, ""


class Invalid(NamedTuple):
    """A job of a request that did not fit :class:`Job`: ``problem`` says why."""

    problem: str


class SpecError(ValueError):
    """A value that does not fit the specification; the message names the field and what to do."""


class BodyError(SpecError):
    """A request body that cannot be read or whose fields around the jobs are wrong."""


def job_from(value: Any, where: str = "jobs[0]") -> Job:
    """One job from a plain dict (e.g. msgpack-decoded), validated; raises :class:`SpecError`
    naming each bad field (``where`` is the job's path in its request)."""
    job = _job_or_invalid(value, where)
    if isinstance(job, Invalid):
        raise SpecError(job.problem)
    return job


def _label(value: Any) -> str:
    if isinstance(value, dict):
        name = value.get("name") or value.get("uid")
        if isinstance(name, str) and name:
            return f" (job {name[:100]!r})"
    return ""


def _job_or_invalid(value: Any, where: str) -> Job | Invalid:
    try:
        return msgspec.convert(value, Job)
    except msgspec.ValidationError:
        suffix = _label(value)
        return Invalid("; ".join(p + suffix for p in field_problems(value, Job, where)))


def decode_submission[R: (SubmitRequest, AppendRequest)](raw: bytes, kind: type[R]) -> R:
    """A submission body decoded straight into ``kind``.

    A job that does not fit becomes an :class:`Invalid` in ``jobs`` (every bad job is listed,
    with each of its bad fields, when :func:`pandaflow.server.jobs.submission.validate` refuses the
    batch); any other problem raises :class:`BodyError`.
    """
    refuse_nul(raw)
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError:
        pass  # find every problem below, at the cost of a second, untyped decode
    except msgspec.DecodeError as exc:
        raise BodyError(_not_json(exc)) from None
    doc = msgspec.json.decode(raw)
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    checked: list[Job | Invalid] = []
    if isinstance(jobs, list) and jobs:
        checked = [_job_or_invalid(job, f"jobs[{i}]") for i, job in enumerate(jobs)]
        doc = {**doc, "jobs": [job if isinstance(job, Job) else Job() for job in checked]}
    try:
        request = msgspec.convert(doc, kind)
    except msgspec.ValidationError as exc:
        raise BodyError(explain(exc, doc, kind)) from None
    request.jobs = checked  # type: ignore[assignment]
    return request


def decode[T](raw: bytes, kind: type[T], root: str = "the request body") -> T:
    """A JSON body decoded into ``kind``; raises :class:`BodyError` saying what was wrong."""
    refuse_nul(raw)
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError
        raise BodyError(explain(exc, msgspec.json.decode(raw), kind, root=root)) from None
    except msgspec.DecodeError as exc:
        raise BodyError(_not_json(exc)) from None


NUL_REFUSED = "text may not contain NUL characters (\\u0000): the database cannot store them"


def refuse_nul(raw: bytes) -> None:
    """Refuse a JSON body with a NUL character in a string (PostgreSQL text cannot hold one): one
    scan of the raw bytes; the document is walked only when it may have one, to name the field."""
    if b"\\u0000" not in raw:
        return
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return  # the decode that follows says why
    where = _nul_at(doc, "")
    if where is not None:
        raise BodyError(f"{where or 'the request body'}: {NUL_REFUSED}")


def _nul_at(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, list):
        items: Any = ((f"{path}[{i}]", item) for i, item in enumerate(value))
    elif isinstance(value, dict):
        items = ((key_path(path, key), (key, item)) for key, item in value.items())
    else:
        return None
    for where, item in items:
        for part in item if isinstance(value, dict) else (item,):
            found = _nul_at(part, where)
            if found is not None:
                return found
    return None


def _not_json(exc: msgspec.DecodeError) -> str:
    detail = str(exc).removeprefix("JSON is malformed: ")
    detail = detail[:1].lower() + detail[1:]
    return f"the request body is not valid JSON ({detail}); send a JSON object"


# ---------------------------------------------------------------- parsl resource_specification


class ResourceSpecification(Struct, kw_only=True, forbid_unknown_fields=True):
    """A parsl ``resource_specification`` as :class:`~pandaflow.executors.PandaExecutor` takes it.

    Memory and disk are MB and ``running_time_min`` minutes, as parsl's own executors count them;
    :data:`RESOURCE_FIELDS` maps each key onto the job field it sets.
    """

    cores: Cores | UnsetType = UNSET
    memory: MemoryMB | UnsetType = UNSET
    disk: DiskMB | UnsetType = UNSET
    running_time_min: (
        Annotated[
            float,
            Meta(
                gt=0,
                description="time limit of the job, minutes",
                extra={"expected": "a positive number of minutes"},
            ),
        ]
        | UnsetType
    ) = UNSET
    priority: Priority | UnsetType = UNSET
    queue: QueueName | UnsetType = UNSET
    max_attempts: Attempts | UnsetType = UNSET
    memory_multiplier: Multiplier | UnsetType = UNSET
    memory_max: MemoryCap | UnsetType = UNSET
    workflow: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=NAME_MAX,
                pattern=r"\S",
                description="the workflow the task is recorded under (default: the executor's)",
            ),
        ]
        | UnsetType
    ) = UNSET
    task: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=NAME_MAX,
                pattern=r"\S",
                description="the task (label) the job belongs to (default: the function's name)",
            ),
        ]
        | UnsetType
    ) = UNSET
    key: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=48,
                pattern=r"^[A-Za-z0-9._:/+=-]+$",
                description="the task's identity within a named run (default: function and arguments); "
                "a rerun with the same run name gets the result of the task with the same key back",
                extra={"expected": "1-48 characters of letters, digits and ._:/+=-"},
            ),
        ]
        | UnsetType
    ) = UNSET


#: resource_specification key -> (job field, factor from the key's unit to the field's).
RESOURCE_FIELDS: dict[str, tuple[str, float | None]] = {
    "cores": ("cores", None),
    "memory": ("memory_mb", None),
    "disk": ("disk_mb", None),
    "running_time_min": ("walltime_s", 60.0),
    "priority": ("priority", None),
    "queue": ("queue", None),
    "max_attempts": ("max_attempts", None),
    "memory_multiplier": ("memory_multiplier", None),
    "memory_max": ("memory_max_mb", None),
    "workflow": ("workflow", None),  # taken by the executor: the workflow of the submission
    "task": ("task", None),
    "key": ("key", None),  # taken by the executor: part of the job's uid
}
RESOURCE_KEYS = tuple(RESOURCE_FIELDS)
assert RESOURCE_KEYS == ResourceSpecification.__struct_fields__


class ResourceError(SpecError):
    """A resource_specification that cannot be used; ``keys`` are the offending keys."""

    def __init__(self, keys: set[str], message: str):
        super().__init__(message)
        self.keys = keys


def resource_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The job fields a parsl resource_specification asks for; raises :class:`ResourceError`."""
    if not spec:
        return {}
    unknown = {key for key in spec if key not in RESOURCE_FIELDS}
    if unknown:
        raise ResourceError(
            unknown,
            f"unknown resource_specification key(s) {', '.join(map(repr, sorted(unknown, key=str)))}; "
            f"PandaExecutor accepts only {', '.join(RESOURCE_KEYS)}",
        )
    try:
        resources = msgspec.convert(dict(spec), ResourceSpecification)
    except msgspec.ValidationError as exc:
        found = re.search(r"`\$\.(\w+)", str(exc))  # msgspec's "... - at `$.cores`"
        raise ResourceError(
            {found[1]} if found else set(spec),
            explain(exc, dict(spec), ResourceSpecification, root="the resource_specification"),
        ) from None
    job: dict[str, Any] = {}
    for key, (field, factor) in RESOURCE_FIELDS.items():
        value = getattr(resources, key)
        if value is not UNSET:
            job[field] = value * factor if factor is not None else value
    return job
