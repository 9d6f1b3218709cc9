"""Bulk submission: validate every job, broker it, then store the whole batch or nothing.

What a job may hold is defined once, in :mod:`pandaflow.spec`; :func:`validate` applies it (and
brokerage) to jobs decoded from a REST body or sent as plain dicts over ZeroMQ.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select

from pandaflow.server.jobs import dag
from pandaflow.server.jobs.broker import Broker, BrokerageError
from pandaflow.server.jobs.states import PENDING, PRUNED, READY, Effects
from pandaflow.server.store import schema as s
from pandaflow.server.store.statements import MAX_PARAMS, Sql, chunks, claim_writes, insert_sql, marks
from pandaflow.spec import DEFAULT_TASK, MAX_ATTEMPTS_DEFAULT, Invalid, Job, SpecError, job_from, job_kind

_JOB_COLUMNS = (
    "uid", "workflow_id", "task_id", "name", "kind", "status", "queue", "priority", "cores", "memory_mb",
    "disk_mb", "walltime_s", "max_attempts", "attempt", "client", "command", "env", "error_code",
    "error_diag", "stdout_tail", "created_at", "updated_at", "n_unmet", "memory_multiplier", "memory_max_mb",
    "retry_unless_exit", "always",
)  # fmt: skip
_PRUNED_AT_SUBMISSION = "an input can never exist: its producer failed or was cancelled before this job came"


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


def _clean(i: int, job: Job, broker: Broker, problems: list[str]) -> dict[str, Any] | None:
    """The stored form of a job that fits :class:`~pandaflow.spec.Job`, brokered; None if refused."""
    kind, why = job_kind(job)
    memory = job.memory_mb
    cap = job.memory_max_mb
    if not why and cap is not None and memory and cap < memory:
        why = f"memory_max_mb ({cap}) is below memory_mb ({memory})"
    cores = job.cores or 1
    if not why:
        try:
            queue = broker.choose(memory, cores, job.walltime_s, job.queue)
        except BrokerageError as exc:
            why = str(exc)
    if why:
        problems.append(f"jobs[{i}] ({job.name or job.uid or 'unnamed'}): {why}")
        return None
    env = job.env
    multiplier = job.memory_multiplier
    codes = job.retry_unless_exit
    return {
        "uid": job.uid or _new_uid(),
        "name": job.name or "",
        "task": job.task or DEFAULT_TASK,
        "kind": kind,
        "buffer": job.buffer if kind == "python" else None,
        "command": job.command,
        "env": json.dumps(env) if env else None,
        "cores": cores,
        "memory_mb": memory,
        "disk_mb": job.disk_mb,
        "walltime_s": job.walltime_s,
        "priority": job.priority or 0,
        "max_attempts": job.max_attempts or MAX_ATTEMPTS_DEFAULT,
        "queue": queue,
        "memory_multiplier": float(multiplier) if multiplier is not None else None,
        "memory_max_mb": cap,
        "retry_unless_exit": json.dumps(codes) if codes else None,
        "always": bool(job.always),
        # An empty tuple, not a new list per job: a million empty lists cost the garbage collector
        # more than the rest of validation (readers iterate them, none appends).
        "inputs": job.inputs or (),
        "outputs": job.outputs or (),
        "parents": job.parents or (),
    }


def validate(jobs: Sequence[Job | Invalid | dict[str, Any]], broker: Broker) -> list[dict[str, Any]]:
    """Check and broker every job; raise :class:`SubmissionError` listing all problems.

    Jobs are :class:`~pandaflow.spec.Job` structs (a REST body decoded by
    :func:`~pandaflow.spec.decode_submission`, with :class:`~pandaflow.spec.Invalid` in place of
    the jobs that did not fit) or plain dicts (ZeroMQ submissions), checked here against the
    same definition. Returns the jobs as :func:`store` takes them.
    """
    if not isinstance(jobs, Sequence) or isinstance(jobs, str | bytes) or not jobs:
        raise SubmissionError(["'jobs' must be a non-empty list of job objects"])
    problems: list[str] = []
    clean: list[dict[str, Any]] = []
    uids: set[str] = set()
    for i, job in enumerate(jobs):
        if type(job) is not Job:
            if isinstance(job, Invalid):
                problems.append(job.problem)
                continue
            try:
                job = job_from(job, f"jobs[{i}]")
            except SpecError as exc:
                problems.append(str(exc))
                continue
        out = _clean(i, job, broker, problems)
        if out is None:
            continue
        if out["uid"] in uids:
            problems.append(f"jobs[{i}]: duplicate uid {out['uid']!r} in the same submission")
        uids.add(out["uid"])
        clean.append(out)
    if problems:
        raise SubmissionError(problems)
    return clean


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
    :mod:`pandaflow.server.jobs.dag`) and stored pending until their inputs are available;
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
