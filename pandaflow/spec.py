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
* :func:`explain` turns msgspec's ``ValidationError`` into the project's message: the field
  path, what was expected and what was given
  (``jobs[3].cores: expected an integer of at least 1, got 2.5``).

What a field-by-field type cannot say (a python job needs a ``buffer``) is checked by
:func:`job_kind` and stated for the OpenAPI document in :data:`SCHEMA_RULES`, side by side.
Over JSON the ``buffer`` of a python job is base64 text; over msgpack it is raw bytes.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # the database's integer columns are 32-bit
MAX_ATTEMPTS_DEFAULT = 3
DEFAULT_TASK = "default"
#: base64 text exactly as msgspec decodes it into ``bytes`` (standard alphabet, padded).
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


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


Jobs = Annotated[list[Job], Meta(min_length=1, extra={"expected": "a non-empty list of job objects"})]
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
            extra={"expected": "a non-empty string (the name)"},
        ),
    ]
    jobs: Jobs
    owner: Annotated[str, Meta(max_length=128)] = ""
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
#: and :func:`pandaflow.server.sites.parse`), merged into each struct's schema. Written as flat
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
    """One job from a plain dict (e.g. msgpack-decoded), validated; raises :class:`SpecError`."""
    try:
        return msgspec.convert(value, Job)
    except msgspec.ValidationError as exc:
        raise SpecError(explain(exc, value, Job, where)) from None


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
        return Invalid("; ".join(p + suffix for p in problems(value, Job, where)))


def decode_submission[R: (SubmitRequest, AppendRequest)](raw: bytes, kind: type[R]) -> R:
    """A submission body decoded straight into ``kind``.

    A job that does not fit becomes an :class:`Invalid` in ``jobs`` (every bad job is listed,
    with each of its bad fields, when :func:`pandaflow.server.submission.validate` refuses the
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
        items = ((_key_path(path, key), (key, item)) for key, item in value.items())
    else:
        return None
    for where, item in items:
        for part in item if isinstance(value, dict) else (item,):
            found = _nul_at(part, where)
            if found is not None:
                return found
    return None


def _key_path(path: str, key: Any) -> str:
    if isinstance(key, str) and re.fullmatch(r"[\w-]+", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


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
        Annotated[float, Meta(gt=0, extra={"expected": "a positive number of minutes"})] | UnsetType
    ) = UNSET
    priority: Priority | UnsetType = UNSET
    queue: QueueName | UnsetType = UNSET
    max_attempts: Attempts | UnsetType = UNSET
    memory_multiplier: Multiplier | UnsetType = UNSET
    memory_max: MemoryCap | UnsetType = UNSET


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
        key = _path(str(exc))[1:2]
        raise ResourceError(
            set(key) or set(spec),
            explain(exc, dict(spec), ResourceSpecification, root="the resource_specification"),
        ) from None
    job: dict[str, Any] = {}
    for key, (field, factor) in RESOURCE_FIELDS.items():
        value = getattr(resources, key)
        if value is not UNSET:
            job[field] = value * factor if factor is not None else value
    return job


# ---------------------------------------------------------------- messages


def show(value: Any) -> str:
    """A value as a message shows it: short, and in the words of JSON/YAML (true, null)."""
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    return type(value).__name__


_MISSING = object()
_MESSAGE = re.compile(r"(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>.*)`)?", re.S)
_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_NONE_TYPES = (type(None), UnsetType)


def _path(message: str) -> list[str | int]:
    """``["$", "jobs", 3, "cores"]`` from msgspec's ``... - at `$.jobs[3].cores```."""
    found = _MESSAGE.fullmatch(message)
    parts: list[str | int] = ["$"]
    for name, index in _PART.findall((found and found["path"]) or ""):
        parts.append(name if name else (index if index == "..." else int(index)))
    if found and found["key"]:
        parts.append("...")  # a key of the mapping at the path
    return parts


def _unwrap(tp: Any) -> tuple[Any, list[Meta]]:
    """A type without its Annotated layers and None/UNSET alternatives, and its Meta constraints."""
    metas: list[Meta] = []
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *extras = get_args(tp)
            metas.extend(m for m in extras if isinstance(m, Meta))
        elif origin is Union or origin is types.UnionType:
            rest = [t for t in get_args(tp) if t not in _NONE_TYPES]
            if len(rest) != 1:
                return tp, metas
            tp = rest[0]
        else:
            return tp, metas


def _fields(tp: Any) -> dict[str, Any]:
    return {f.encode_name: f.type for f in msgspec.structs.fields(tp)}


def field_type(struct: type[Struct], name: str, *, nullable: bool = True) -> Any:
    """The type of a field of ``struct``; without its ``None`` alternative unless ``nullable``."""
    tp = _fields(struct)[name]
    if nullable:
        return tp
    base = tp
    while get_origin(base) is Annotated:
        base = get_args(base)[0]
    if get_origin(base) is Union or get_origin(base) is types.UnionType:
        rest = [t for t in get_args(base) if t not in _NONE_TYPES]
        if len(rest) == 1:
            return rest[0]
    return tp


def check_value(value: Any, tp: Any, where: str) -> str | None:
    """Why ``value`` does not fit the type ``tp`` (a message naming ``where``), or None."""
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        return explain(exc, value, tp, where)
    return None


def _bad_entry(mapping: dict, tp: Any) -> tuple[Any, Any, Any]:
    """(key, value, type) of the first entry of ``mapping`` that does not fit ``dict[K, V]``."""
    key_type, value_type = get_args(tp) or (str, Any)
    for key, value in mapping.items():
        for item, item_type in ((key, key_type), (value, value_type)):
            try:
                msgspec.convert(item, item_type)
            except msgspec.ValidationError:
                return key, item, item_type
    return "...", _MISSING, value_type


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else f"{x:g}"


def _bound(kind: str, metas: list[Meta], value: Any, default: tuple[float, float] | None) -> str:
    low = next((m.ge for m in metas if m.ge is not None), None)
    high = next((m.le for m in metas if m.le is not None), None)
    above = next((m.gt for m in metas if m.gt is not None), None)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    # The 32-bit limits of the columns are only worth saying when the value passes one.
    if default and high == default[1] and not (number and value > high):
        high = None
    if default and low == default[0] and not (number and value < low):
        low = None
    if above == 0 and low is None and high is None:
        return f"a positive {kind}"
    if low == 0 and high is None:
        return f"a non-negative {kind}"
    if low is not None and high is not None:
        return f"{_article(kind)} {kind} from {_number(low)} to {_number(high)}"
    if low is not None:
        return f"{_article(kind)} {kind} of at least {_number(low)}"
    if above is not None:
        return f"{_article(kind)} {kind} above {_number(above)}"
    if high is not None:
        return f"{_article(kind)} {kind} of at most {_number(high)}"
    return f"{_article(kind)} {kind}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(tp: Any, value: Any = _MISSING) -> str:
    """What a value of type ``tp`` must be, in words (``an integer of at least 1``)."""
    base, metas = _unwrap(tp)
    for meta in metas:
        if meta.extra and "expected" in meta.extra:
            return meta.extra["expected"]
    if base is bool:
        return "true or false"
    if base is int:
        return _bound("integer", metas, value, (INT_MIN, INT_MAX))
    if base is float:
        return _bound("number", metas, value, None)
    if base is str:
        low = next((m.min_length for m in metas if m.min_length), 0)
        high = next((m.max_length for m in metas if m.max_length is not None), None)
        text = "a non-empty string" if low else "a string"
        return text + (f" of at most {high} characters" if high is not None else "")
    if base is bytes:
        return "base64 text"
    if get_origin(base) is Literal:
        return "one of " + ", ".join(map(repr, get_args(base)))
    if get_origin(base) is list:
        low = next((m.min_length for m in metas if m.min_length), 0)
        return "a non-empty list" if low else "a list"
    if get_origin(base) is dict or base is dict:
        return "a mapping"
    if isinstance(base, type) and issubclass(base, Struct):
        return "an object"
    return getattr(base, "__name__", str(base))


def _choices_problem(label: str, metas: list[Meta], value: Any) -> str | None:
    extra = next((m.extra for m in metas if m.extra and "choices" in m.extra), None)
    if extra is None or not isinstance(value, str):
        return None
    allowed, noun = extra["choices"], extra["noun"]
    items = value.split(",")
    unknown = [item for item in items if item and item not in allowed]
    if unknown:
        return f"{label}: unknown {noun} {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
    return f"{label}: expected one or more {noun}s separated by commas, got {value!r}; allowed: " + ", ".join(
        allowed
    )


def explain(
    exc: msgspec.ValidationError,
    doc: Any,
    tp: Any,
    where: str = "",
    *,
    root: str = "the request body",
    prefix: str = "",
) -> str:
    """The project's message for a ``ValidationError`` of ``msgspec.convert(doc, tp)`` or of a JSON
    decode of ``doc`` into ``tp``: ``<prefix><path>: what was wrong; what to do``.

    ``where`` is the path of ``doc`` in a larger document (``jobs[3]``); ``root`` names ``doc``
    itself when the problem is with the whole of it.
    """
    what = _MESSAGE.fullmatch(str(exc))["what"]  # type: ignore[index]
    value, label = doc, where
    for part in _path(str(exc))[1:]:
        base, _ = _unwrap(tp)
        if part == "...":
            key, value, tp = _bad_entry(value if isinstance(value, dict) else {}, base)
            label = _key_path(label, key)
        elif isinstance(part, int):
            (tp,) = get_args(base) or (Any,)
            value = value[part] if isinstance(value, list) and part < len(value) else _MISSING
            label = f"{label}[{part}]"
        else:
            tp = _fields(base).get(part, Any) if isinstance(base, type) and issubclass(base, Struct) else Any
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            label = f"{label}.{part}" if label else part
    named = re.search(r"field `(.*)`", what)
    if what.startswith("Object contains unknown field") and named:
        field = named[1]
        base, _ = _unwrap(tp)
        known = ", ".join(_fields(base)) if isinstance(base, type) and issubclass(base, Struct) else ""
        if field == "buffer_b64" and base is Job:
            return f"{prefix}{label}.{field}: renamed 'buffer' (the same base64 text); rename the key"
        if not label:
            return f"{root}: unknown field {field!r}; known fields: {known}"
        return f"{prefix}{label}.{field}: unknown field; known fields: {known}"
    if what.startswith("Object missing required field") and named:
        if not label:
            return f"{root}: {named[1]!r} is missing; it is required"
        return f"{prefix}{label}.{named[1]}: missing; it is required"
    at = f"{prefix}{label}" if label else root
    _, metas = _unwrap(tp)
    return _choices_problem(at, metas, value) or f"{at}: expected {describe(tp, value)}, got {show(value)}"


def problems(values: Any, struct: type[Struct], where: str = "") -> list[str]:
    """Every field of ``values`` that does not fit ``struct``, one message each (``struct`` must
    have no required fields); ``[]`` when all fit."""
    try:
        msgspec.convert(values, struct)
        return []
    except msgspec.ValidationError as exc:
        if not isinstance(values, dict):
            return [explain(exc, values, struct, where)]
    found = []
    for key, value in values.items():
        try:
            msgspec.convert({key: value}, struct)
        except msgspec.ValidationError as exc:
            found.append(explain(exc, {key: value}, struct, where))
    return found


def present(struct: Struct) -> dict[str, Any]:
    """The fields of ``struct`` that were given (not UNSET), by name."""
    return {name: value for name, value in iter_fields(struct) if value is not UNSET}


def iter_fields(struct: Struct) -> Iterator[tuple[str, Any]]:
    for name in struct.__struct_fields__:
        yield name, getattr(struct, name)
