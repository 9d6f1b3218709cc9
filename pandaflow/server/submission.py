"""Bulk submission: validate every job, broker it, then store the whole batch or nothing."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select

from pandaflow.server import dag
from pandaflow.server import schema as s
from pandaflow.server.broker import Broker, BrokerageError
from pandaflow.server.statements import MAX_PARAMS, Sql, chunks, claim_writes, insert_sql, marks
from pandaflow.server.states import PENDING, PRUNED, READY, Effects

MAX_ATTEMPTS_DEFAULT = 3
_JOB_COLUMNS = (
    "uid", "workflow_id", "task_id", "name", "kind", "status", "queue", "priority", "cores", "memory_mb",
    "disk_mb", "walltime_s", "max_attempts", "attempt", "client", "command", "env", "error_code",
    "error_diag", "stdout_tail", "created_at", "updated_at", "n_unmet", "memory_multiplier", "memory_max_mb",
    "retry_unless_exit", "always",
)  # fmt: skip
_KINDS = ("python", "shell")
_INT_FIELDS = ("cores", "memory_mb", "disk_mb", "priority", "max_attempts")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1  # the columns are 32-bit integers
_TEXT_LIMITS = {"uid": 96, "name": 255, "task": 255, "queue": 128}  # column sizes in schema.py
_DAG_FIELDS = ("inputs", "outputs", "parents")
_RETRY_FIELDS = ("memory_multiplier", "memory_max_mb", "retry_unless_exit")
_PRUNED_AT_SUBMISSION = "an input can never exist: its producer failed or was cancelled before this job came"
_KNOWN_FIELDS = frozenset(
    {
        "uid",
        "name",
        "task",
        "kind",
        "buffer",
        "command",
        "env",
        "walltime_s",
        "queue",
        *_INT_FIELDS,
        *_DAG_FIELDS,
        *_RETRY_FIELDS,
        "always",
    }
)


_UID_PROCESS = uuid.uuid4().hex[:12]  # tells apart uids made by several server processes
_uid_serial = itertools.count()


def _new_uid() -> str:
    """A unique id that sorts by creation time: a million inserts then append to the uid index
    instead of landing at random places in it (random uuid4 keys made large ingests slow).
    Unique by process (random part drawn once) and serial number, with no system call per job."""
    return f"{time.time_ns():016x}{_UID_PROCESS}{next(_uid_serial):x}"


class SubmissionError(ValueError):
    """The batch was refused as a whole; ``problems`` lists every offending job."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"submission refused, nothing was stored: {shown}{more}")


@dataclass(slots=True)
class Submitted:
    workflow_id: int
    accepted: list[str] = field(default_factory=list)  # uids stored by this call
    duplicates: list[str] = field(default_factory=list)  # uids stored earlier (idempotent resend)
    ids: dict[str, int] = field(default_factory=dict)  # uid -> job id
    queues: set[str] = field(default_factory=set)  # queues that received ready jobs
    payloads: dict[int, bytes] = field(default_factory=dict)  # job id -> function buffer stored


def _int_field(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not _INT_MIN <= value <= _INT_MAX:
        return f"must be between {_INT_MIN} and {_INT_MAX}, got {value}"
    return ""


def _text_field(limit: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or len(value) > limit:
            return f"must be a string of at most {limit} characters"
        return ""

    return check


def _names_field(value: Any) -> str:
    bad = "must be a list of names (non-empty strings of at most 500 characters)"
    if type(value) is not list:
        return bad
    for name in value:  # a plain loop: all() over a generator costs twice as much per name
        if type(name) is not str or not 0 < len(name) <= 500:
            return bad
    return ""


def _walltime_field(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return f"must be a positive number of seconds, got {value!r}"
    return ""


def _env_field(value: Any) -> str:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return "must map strings to strings"
    return ""


def _multiplier_field(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 100:
        return f"must be a number from 1 to 100, got {value!r}"
    return ""


def _memory_cap_field(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _INT_MAX:
        return f"must be a positive integer (MB), got {value!r}"
    return ""


def _exit_codes_field(value: Any) -> str:
    if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        return "must be a list of exit codes (integers)"
    return ""


def _bool_field(value: Any) -> str:
    if not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    return ""


def _queue_field(value: Any) -> str:
    if not isinstance(value, str):
        return f"must be a queue name, got {value!r}"
    return _text_field(_TEXT_LIMITS["queue"])(value)


def _anything(value: Any) -> str:
    return ""  # checked with the fields it depends on (kind, buffer, command)


# One check per field, run only for the fields a job has: a million jobs of five fields each
# cost five small calls apiece, not a pass over every field the schema knows.
_FIELD_CHECKS: dict[str, Callable[[Any], str]] = {
    **{key: _int_field for key in _INT_FIELDS},
    **{key: _text_field(limit) for key, limit in _TEXT_LIMITS.items()},
    **{key: _names_field for key in _DAG_FIELDS},
    "queue": _queue_field,
    "walltime_s": _walltime_field,
    "env": _env_field,
    "memory_multiplier": _multiplier_field,
    "memory_max_mb": _memory_cap_field,
    "retry_unless_exit": _exit_codes_field,
    "always": _bool_field,
    "kind": _anything,
    "buffer": _anything,
    "command": _anything,
}
assert set(_FIELD_CHECKS) == _KNOWN_FIELDS


def _check_job(i: int, job: Any, broker: Broker, problems: list[str]) -> dict[str, Any] | None:
    def refuse(why: str) -> None:
        label = f"jobs[{i}] ({job.get('name') or job.get('uid') or 'unnamed'})"
        problems.append(f"{label}: {why}")

    if not isinstance(job, dict):
        problems.append(f"jobs[{i}]: expected an object, got {type(job).__name__}")
        return None
    for key, value in job.items():
        check = _FIELD_CHECKS.get(key)
        if check is None:
            unknown = sorted(set(job) - _KNOWN_FIELDS)
            refuse(f"unknown field(s) {unknown}; known: {sorted(_KNOWN_FIELDS)}")
            return None
        if value is not None:
            why = check(value)
            if why:
                refuse(f"{key} {why}")
                return None
    get = job.get
    command = get("command")
    kind = get("kind", "shell" if "command" in job else "python")
    if kind not in _KINDS:
        refuse(f"kind must be one of {_KINDS}, got {kind!r}")
        return None
    if kind == "python" and not isinstance(get("buffer"), bytes | bytearray):
        refuse("a python job needs 'buffer' (bytes of a parsl pack_apply_message)")
        return None
    if kind == "shell" and (not isinstance(command, str) or not command.strip()):
        refuse("a shell job needs a non-empty 'command' string")
        return None
    cores = get("cores")
    if cores is None:
        cores = 1
    elif cores < 1:
        refuse(f"cores must be at least 1, got {cores}")
        return None
    memory = get("memory_mb")
    if memory is not None and memory < 0:
        refuse(f"memory_mb must not be negative, got {memory}")
        return None
    if (get("disk_mb") or 0) < 0:
        refuse(f"disk_mb must not be negative, got {job['disk_mb']}")
        return None
    max_attempts = get("max_attempts")
    if max_attempts is None:
        max_attempts = MAX_ATTEMPTS_DEFAULT
    elif max_attempts < 1:
        refuse(f"max_attempts must be at least 1, got {max_attempts}")
        return None
    cap = get("memory_max_mb")
    if cap is not None and memory and cap < memory:
        refuse(f"memory_max_mb ({cap}) is below memory_mb ({memory})")
        return None
    walltime = get("walltime_s")
    try:
        queue = broker.choose(memory, cores, walltime, get("queue"))
    except BrokerageError as exc:
        refuse(str(exc))
        return None
    env = get("env")
    multiplier = get("memory_multiplier")
    codes = get("retry_unless_exit")
    return {
        "uid": get("uid") or _new_uid(),
        "name": get("name") or "",
        "task": get("task") or "default",
        "kind": kind,
        "buffer": bytes(job["buffer"]) if kind == "python" else None,
        "command": command,
        "env": json.dumps(env) if env else None,
        "cores": cores,
        "memory_mb": memory,
        "disk_mb": get("disk_mb"),
        "walltime_s": walltime,
        "priority": get("priority") or 0,
        "max_attempts": max_attempts,
        "queue": queue,
        "memory_multiplier": float(multiplier) if multiplier is not None else None,
        "memory_max_mb": cap,
        "retry_unless_exit": json.dumps(codes) if codes else None,
        "always": bool(get("always")),
        "inputs": get("inputs") or [],
        "outputs": get("outputs") or [],
        "parents": get("parents") or [],
    }


def validate(jobs: Sequence[Any], broker: Broker) -> list[dict[str, Any]]:
    """Check and broker every job; raise :class:`SubmissionError` listing all problems."""
    if not isinstance(jobs, Sequence) or isinstance(jobs, str | bytes) or not jobs:
        raise SubmissionError(["'jobs' must be a non-empty list of job objects"])
    problems: list[str] = []
    clean = [_check_job(i, job, broker, problems) for i, job in enumerate(jobs)]
    uids: set[str] = set()
    for i, job in enumerate(clean):
        if job is None:
            continue
        if job["uid"] in uids:
            problems.append(f"jobs[{i}]: duplicate uid {job['uid']!r} in the same submission")
        uids.add(job["uid"])
    if problems:
        raise SubmissionError(problems)
    return clean  # type: ignore[return-value]


def _initial_status(unmet: int) -> str:
    """pending while inputs are awaited, ready at once, or pruned when an input can never exist."""
    if unmet < 0:
        return PRUNED
    return PENDING if unmet else READY


class WorkflowBook:
    """Finds or creates workflows and tasks, caching ids (rows are never deleted)."""

    def __init__(self) -> None:
        self._workflows: dict[tuple[str, str], int] = {}
        self._tasks: dict[tuple[int, str], int] = {}

    def workflow(self, conn: Connection, name: str, client: str | None, owner: str, now: float) -> int:
        key = (client or "", name)
        wid = self._workflows.get(key)
        if wid is None:
            wid = conn.execute(
                select(s.workflows.c.id).where(s.workflows.c.name == name, s.workflows.c.client == client)
                if client
                else select(s.workflows.c.id).where(False)
            ).scalar()
            if wid is None:
                wid = conn.execute(
                    insert(s.workflows).values(
                        name=name, client=client, owner=owner, created_at=now, updated_at=now
                    )
                ).inserted_primary_key[0]
            if client:
                self._workflows[key] = wid
        return wid

    def task(self, conn: Connection, workflow_id: int, name: str, now: float) -> int:
        key = (workflow_id, name)
        tid = self._tasks.get(key)
        if tid is None:
            tid = conn.execute(
                select(s.tasks.c.id).where(s.tasks.c.workflow_id == workflow_id, s.tasks.c.name == name)
            ).scalar()
            if tid is None:
                tid = conn.execute(
                    insert(s.tasks).values(workflow_id=workflow_id, name=name, created_at=now)
                ).inserted_primary_key[0]
            self._tasks[key] = tid
        return tid

    def forget(self) -> None:
        """Drop cached ids (after a rolled-back transaction they may not exist)."""
        self._workflows.clear()
        self._tasks.clear()


def store(
    conn: Connection,
    clean: list[dict[str, Any]],
    book: WorkflowBook,
    *,
    workflow: str = "",
    client: str | None = None,
    owner: str = "",
    now: float | None = None,
    fresh: bool = False,
    available: Sequence[str] = (),
    workflow_id: int | None = None,
) -> Submitted:
    """Insert validated jobs as ready (in the caller's transaction), skipping uids already stored.

    ``fresh`` promises that none of the uids was sent before (an executor's first send of a
    batch), which saves the duplicate lookup; the unique index still guards the table.
    Jobs with ``inputs``/``outputs``/``parents`` are checked as a graph (see
    :mod:`pandaflow.server.dag`) and stored pending until their inputs are available;
    ``available`` names products that exist already. A graph problem raises
    :class:`SubmissionError` before anything is written. With ``workflow_id`` the jobs are
    appended to that workflow (a large DAG sent in pieces: later pieces may read the products
    earlier ones write; ``parents`` name jobs of the same piece).
    """
    now = time.time() if now is None else now
    claim_writes(conn)  # the products read below must be those a concurrent completion left
    wid = workflow_id if workflow_id is not None else book.workflow(conn, workflow, client, owner, now)
    out = Submitted(workflow_id=wid)
    sql = Sql(conn)
    existing: dict[str, int] = {}
    if not fresh:
        uids = [j["uid"] for j in clean]
        for part in chunks(uids):
            existing.update(sql.rows(f"SELECT uid, id FROM jobs WHERE uid IN ({marks(len(part))})", part))
    graph = dag.uses_dag(clean) or bool(available)
    products: dict[str, tuple[int, str]] = {}
    waits: dict[str, int] = {}
    if graph:
        fresh_jobs = [j for j in clean if j["uid"] not in existing]
        products = dag.existing_products(conn, wid, dag.referenced(fresh_jobs, available))
        problems = dag.check(fresh_jobs, available, {n: st for n, (_i, st) in products.items()})
        if problems:
            raise SubmissionError(problems)
        waits = dag.unmet(fresh_jobs, available, products)
    rows = []
    payloads = []
    for job in clean:
        if job["uid"] in existing:
            out.duplicates.append(job["uid"])
            out.ids[job["uid"]] = existing[job["uid"]]
            continue
        rows.append(
            (
                job["uid"],
                wid,
                book.task(conn, wid, job["task"], now),
                job["name"],
                job["kind"],
                _initial_status(waits.get(job["uid"], 0)),
                job["queue"],
                job["priority"],
                job["cores"],
                job["memory_mb"],
                job["disk_mb"],
                job["walltime_s"],
                job["max_attempts"],
                0,
                client,
                job["command"],
                job["env"],
                0,
                "" if waits.get(job["uid"], 0) >= 0 else _PRUNED_AT_SUBMISSION,
                "",
                now,
                now,
                max(0, waits.get(job["uid"], 0)),
                job["memory_multiplier"],
                job["memory_max_mb"],
                job["retry_unless_exit"],
                job["always"],
            )
        )
        payloads.append(job["buffer"])
    # Multi-row INSERT ... RETURNING, mapped back by uid (RETURNING order is not guaranteed).
    per = max(1, MAX_PARAMS // len(_JOB_COLUMNS))
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        flat = [v for row in part for v in row]
        for job_id, uid in sql.rows(insert_sql("jobs", _JOB_COLUMNS, len(part), "id, uid"), flat):
            out.ids[uid] = job_id
    if graph:
        stored = [(out.ids[j["uid"]], j) for j in clean if j["uid"] not in existing]
        dag.store(conn, wid, stored, available, products)
        doomed = [job_id for job_id, j in stored if waits.get(j["uid"], 0) < 0]
        if doomed:  # what they would have written can never exist either
            pruned = Effects()
            dag.prune(conn, doomed, now, _PRUNED_AT_SUBMISSION, pruned)
            out.queues |= pruned.queues
    blobs = []
    for row, buffer in zip(rows, payloads, strict=True):
        uid = row[0]
        out.accepted.append(uid)
        if row[5] == READY:
            out.queues.add(row[6])
        if buffer is not None:
            blobs.append((out.ids[uid], buffer))
    if blobs:
        sql.many(insert_sql("job_payloads", ("job_id", "buffer")), blobs)
        out.payloads = dict(blobs)
    return out
