"""Completion: record what pilots report (and what the watchdog infers) and decide, through
the transitions table, whether an attempt finishes the job, fails it for good, or retries it."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from pandaflow import protocol
from pandaflow.errorcodes import ErrorCode, describe, is_retryable
from pandaflow.server.jobs import dag, states
from pandaflow.server.jobs.broker import Broker, BrokerageError
from pandaflow.server.jobs.states import ACTIVE_STATES, DISPATCHED, FAILED, FINAL_STATES, FINISHED, Effects
from pandaflow.server.store import schema as s
from pandaflow.server.store.statements import Sql, chunks, claim_writes, insert_sql, marks

_J = s.jobs.c
_A = s.attempts.c
_TAIL = 2048
MAX_RETURNS = 5  # unstarted hand-backs of one job before losing its pilot counts an attempt


@dataclass(slots=True)
class Completed:
    """What a batch of outcomes changed: the follow-ups to send (``effects``) and counts."""

    effects: Effects = field(default_factory=Effects)
    final: int = 0
    retried: int = 0
    returned: int = 0
    stale: int = 0

    @property
    def notify(self) -> dict[str, list[dict[str, Any]]]:
        return self.effects.notify

    @property
    def requeued(self) -> set[str]:
        return self.effects.queues


def outcome(job_id: int, attempt: int, error_code: int, diag: str) -> protocol.Outcome:
    """A failure outcome produced by the server itself (watchdog)."""
    return protocol.Outcome(
        job_id=job_id, attempt=attempt, ok=False, error_code=int(error_code), error_diag=diag
    )


_SELECT_ACTIVE = (
    "SELECT id, uid, status, attempt, max_attempts, client, queue, stdout_tail, pilot_id, dispatched_at,"
    " started_at, cores, memory_mb, walltime_s, memory_multiplier, memory_max_mb, retry_unless_exit"
    " FROM jobs WHERE id IN ({})"
)
_ATTEMPT_COLUMNS = (
    "job_id", "attempt", "pilot_id", "queue", "status", "error_code", "error_diag", "exit_code",
    "dispatched_at", "started_at", "ended_at", "max_rss_mb", "max_pss_mb", "memory_samples", "memory_mb",
)  # fmt: skip


def record(
    conn: Connection,
    outcomes: list[protocol.Outcome],
    now: float,
    broker: Broker | None = None,
    pilot_id: int | None = None,
) -> Completed:
    """Apply outcomes (as pilots report them, :class:`pandaflow.protocol.Outcome`) in the caller's
    transaction.

    Each outcome of the job's current attempt ends that attempt (one ``attempts`` row) and
    moves the job to finished, failed, or back to ready when the error is retryable and
    attempts are left (after an out-of-memory kill with a larger memory request). Outcomes of
    an earlier attempt, of a job that ended, or (with ``pilot_id``, the reporting pilot) of a
    job another pilot holds now are ignored.
    """
    done = Completed()
    if not outcomes:
        return done
    claim_writes(conn)  # the rows read below are the ones the guarded update finds (SQLite)
    sql = Sql(conn)
    ids = [o.job_id for o in outcomes]
    jobs: dict[int, dict[str, Any]] = {}
    for part in chunks(ids):
        query = _SELECT_ACTIVE.format(marks(len(part))) + (" FOR UPDATE" if sql.pg else "")
        jobs.update((row["id"], row) for row in sql.maps(query, part))
    moves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    each: dict[int, dict[str, Any]] = {}
    reasons: dict[int, str] = {}
    history: list[tuple] = []
    results: dict[int, tuple[bytes, bool]] = {}
    logs: list[tuple] = []
    for o in outcomes:
        job = jobs.get(o.job_id)
        if (
            job is None
            or job["status"] not in ACTIVE_STATES
            or job["attempt"] != o.attempt
            or (pilot_id is not None and job["pilot_id"] != pilot_id)
            or job["id"] in each
        ):
            done.stale += 1  # a late or duplicate report: the job moved on already
            continue
        code = int(o.error_code or 0)
        diag = o.error_diag or ("" if o.ok else describe(code))
        retry: dict[str, Any] = {}
        if o.ok:
            event = "finish"
        elif not is_retryable(code) or job["attempt"] >= job["max_attempts"]:
            event = "fail"
        elif _exit_forbids_retry(job, code, o.exit_code):
            event = "fail"
            diag = f"{diag} (exit code {o.exit_code} is never retried)"
        else:
            event = "retry"
            retry, why_not = _retry_shape(job, code, broker)
            if why_not:
                event = "fail"
                diag = f"{diag}; cannot retry: {why_not}"
        if event == "retry":
            grown = f" with {retry['memory_mb']} MB on {retry['queue']}" if retry.get("grown") else ""
            diag = f"attempt {job['attempt']} of {job['max_attempts']} failed, retrying{grown}: {diag}"
        tail = o.stdout_tail
        values = {
            "error_code": code,
            "error_diag": diag,
            "exit_code": o.exit_code,
            "stdout_tail": tail[-_TAIL:] if tail is not None else job["stdout_tail"],
            "max_rss_mb": o.max_rss_mb or None,
            "max_pss_mb": o.max_pss_mb or None,
        }
        started = o.started_at or job["started_at"]
        ended = o.ended_at or now
        if event == "retry":
            values["queue"] = retry.get("queue", job["queue"])
            values["memory_mb"] = retry.get("memory_mb", job["memory_mb"])
        else:
            values["started_at"] = started
            values["ended_at"] = ended
        each[job["id"]] = values
        reasons[job["id"]] = "" if event == "finish" else f"error {code}: {diag}"
        moves[event].append(job)
        samples = o.memory_samples
        history.append(
            (
                job["id"],
                job["attempt"],
                job["pilot_id"],
                job["queue"],
                FINISHED if o.ok else FAILED,
                code,
                o.error_diag or "",
                o.exit_code,
                job["dispatched_at"],
                started,
                ended,
                o.max_rss_mb or None,
                o.max_pss_mb or None,
                json.dumps(samples) if samples else None,
                job["memory_mb"],
            )
        )
        if o.log:
            logs.append((job["id"], job["attempt"], bytes(o.log)))
        if event != "retry" and o.result is not None:
            results[job["id"]] = (bytes(o.result), o.is_exception)
    fx = done.effects
    applied = [states.apply(conn, event, rows, now, each=each, reason=reasons, effects=fx)
               for event, rows in moves.items()]  # fmt: skip
    for change in applied:
        for job_id, entry in change.entries.items():
            if job_id in results:
                entry.result, entry.is_exception = results[job_id]
        if change.event == "retry":
            done.retried += len(change.moved)
        else:
            done.final += len(change.moved)
    sql.many(insert_sql("attempts", _ATTEMPT_COLUMNS), history)
    sql.many(
        insert_sql("job_results", ("job_id", "result", "is_exception")),
        [(job_id, blob, exc) for job_id, (blob, exc) in results.items()],
    )
    sql.many(insert_sql("job_logs", ("job_id", "attempt", "log")), logs)
    for change in applied:
        dag.follow(conn, change, now, fx)
    return done


def held_by(conn: Connection, pilot_id: int, job_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Jobs the pilot holds (dispatched or running), all or among ``job_ids``, locked for change."""
    sql = Sql(conn)
    lock = " FOR UPDATE" if sql.pg else ""
    query = (
        "SELECT id, uid, client, status, attempt, queue, pilot_id FROM jobs"
        " WHERE pilot_id=? AND status IN ('dispatched','running')"
    )
    if job_ids is None:
        return sql.maps(query + lock, (pilot_id,))
    rows: list[dict[str, Any]] = []
    for part in chunks(job_ids):
        rows += sql.maps(f"{query} AND id IN ({marks(len(part))}){lock}", (pilot_id, *part))
    return rows


def give_back(conn: Connection, rows: list[dict[str, Any]], now: float, reason: str) -> Completed:
    """Jobs dispatched to a pilot that never started them (the pilot was lost, drained, never
    received them, or handed them to a free pilot) go back to their queue with the attempt
    given back; a job given back :data:`MAX_RETURNS` times already counts the attempt this time
    (a job that keeps losing its pilots must not circulate for ever). ``rows`` are jobs read in
    this transaction (id, uid, status, attempt, queue, pilot_id, client)."""
    done = Completed()
    dispatched = [r for r in rows if r["status"] == DISPATCHED]
    if not dispatched:
        return done
    counts = states.returns(conn, [r["id"] for r in dispatched])
    back = [r for r in dispatched if counts.get(r["id"], 0) < MAX_RETURNS]
    worn = [r for r in dispatched if counts.get(r["id"], 0) >= MAX_RETURNS]
    applied = states.apply(conn, "return", back, now, reason=reason, effects=done.effects)
    done.returned = len(applied.moved)
    if worn:
        failed = record(
            conn,
            [outcome(r["id"], r["attempt"], ErrorCode.LOST_IN_DISPATCH,
                     f"{reason}; given back {MAX_RETURNS} times unstarted already") for r in worn],
            now,
        )  # fmt: skip
        done.effects.merge(failed.effects)
        done.final += failed.final
        done.retried += failed.retried
    return done


def _exit_forbids_retry(job: dict[str, Any], code: int, exit_code: int | None) -> bool:
    """ctrl_bps ``retry_unless_exit``: these exit codes mean retrying cannot help."""
    if code != ErrorCode.PAYLOAD_NONZERO_EXIT or exit_code is None or not job.get("retry_unless_exit"):
        return False
    return exit_code in json.loads(job["retry_unless_exit"])


def _retry_shape(job: dict[str, Any], code: int, broker: Broker | None) -> tuple[dict[str, Any], str]:
    """Memory and queue of the next attempt. After an out-of-memory kill the request grows by the
    job's ``memory_multiplier``, else its queue's (1: no escalation), capped by the job's
    ``memory_max_mb``, else by the largest queue of its site that can hold it, and the job is
    re-brokered to a queue that holds it, at its site if one can. Returns (changes, why the job
    cannot be retried or "")."""
    mem = job.get("memory_mb")
    if code != ErrorCode.OUT_OF_MEMORY or not mem:
        return {}, ""
    current = broker.queues.get(job["queue"]) if broker is not None else None
    mult = job.get("memory_multiplier")
    if mult is None:
        mult = current.memory_multiplier if current is not None else 1.0
    if mult <= 1:
        return {}, ""
    cap = job.get("memory_max_mb")
    grown = math.ceil(mem * mult)
    if cap:
        grown = min(grown, cap)
    if grown <= mem:
        return {}, f"memory request {mem} MB is already at its maximum {cap} MB"
    changes: dict[str, Any] = {"memory_mb": grown, "queue": job["queue"], "grown": True}
    if broker is None or (
        current is not None and not current.refusal(grown, job["cores"], job["walltime_s"])
    ):
        return changes, ""
    # Stay at the job's site (its workflow may be pinned or spread there); leave it only when
    # the site has no queue large enough, rather than fail the job.
    site = current.site if current is not None else None
    for where in [site, None] if site is not None else [None]:
        room = _largest(broker, job, where)
        if room is None or room <= mem:
            continue
        changes["memory_mb"] = min(grown, room)
        try:
            changes["queue"] = broker.choose(
                changes["memory_mb"], job["cores"], job["walltime_s"], site=where
            )
        except BrokerageError:
            continue
        return changes, ""
    largest = _largest(broker, job, None)
    return {}, (
        f"no queue can hold more than {mem} MB for this job (largest: {largest} MB)"
        if largest
        else "no queue can hold the job any more"
    )


def _largest(broker: Broker, job: dict[str, Any], site: str | None) -> int | None:
    """The most memory a queue (at ``site``) that takes the job's other needs can give."""
    sizes = [
        q.max_memory_mb
        for q in broker.queues.values()
        if q.online and q.brokerage and (site is None or q.site == site)
        and q.refusal(q.max_memory_mb, job["cores"], job["walltime_s"]) is None
    ]  # fmt: skip
    return max(sizes) if sizes else None


def mark_running(
    conn: Connection,
    pilot_id: int,
    running: dict[int, float],
    now: float,
    attempts: dict[int, int] | None = None,
) -> int:
    """Move jobs a pilot reports as started (``{job_id: started_at}``, and with ``attempts`` the
    attempt it started) from dispatched to running."""
    if not running:
        return 0
    sql = Sql(conn)
    moved = 0
    lock = " FOR UPDATE" if sql.pg else ""
    for part in chunks(list(running)):
        rows = sql.maps(
            f"SELECT id, status, attempt, pilot_id FROM jobs WHERE id IN ({marks(len(part))})"
            f" AND pilot_id=? AND status=?{lock}",
            (*part, pilot_id, DISPATCHED),
        )
        if attempts is not None:
            rows = [r for r in rows if attempts.get(r["id"]) == r["attempt"]]
        each = {r["id"]: {"started_at": float(running[r["id"]])} for r in rows}
        moved += len(states.apply(conn, "start", rows, now, each=each).moved)
    return moved


def record_progress(conn: Connection, pilot_id: int, progress: dict[int, tuple[str, float]]) -> None:
    """Store the output tail and memory high-water mark a pilot reports for its running jobs
    (``{job_id: (tail, max_rss_mb)}``): logs stream to the monitor while jobs run."""
    rows = [(tail[-_TAIL:], rss or None, job_id, pilot_id) for job_id, (tail, rss) in progress.items()]
    Sql(conn).many(
        "UPDATE jobs SET stdout_tail=?, max_rss_mb=?"
        " WHERE id=? AND pilot_id=? AND status IN ('dispatched','running')",
        rows,
    )


def not_held_by(conn: Connection, pilot_id: int, job_ids: set[int]) -> list[int]:
    """Among the jobs a pilot says it holds, those it should not: ended, or another pilot's now
    (it was given up for lost and came back). It is told to kill them."""
    if not job_ids:
        return []
    sql = Sql(conn)
    wrong: list[int] = []
    for part in chunks(sorted(job_ids)):
        wrong += [
            job_id
            for job_id, status, holder in sql.rows(
                f"SELECT id, status, pilot_id FROM jobs WHERE id IN ({marks(len(part))})", part
            )
            if status not in ACTIVE_STATES or holder != pilot_id
        ]
    return wrong


def result_of(conn: Connection, uids: list[str]) -> tuple[list[protocol.Result], list[str]]:
    """Final results for the given job uids, and the uids the server has never stored."""
    rows = (
        conn.execute(
            select(
                _J.id,
                _J.uid,
                _J.status,
                _J.error_code,
                _J.error_diag,
                s.job_results.c.result,
                s.job_results.c.is_exception,
            )
            .select_from(s.jobs.outerjoin(s.job_results, s.job_results.c.job_id == _J.id))
            .where(_J.uid.in_(uids))
        )
        .mappings()
        .all()
    )
    known = {r["uid"] for r in rows}
    results = [
        states.result_entry(r, r["status"], r["error_code"], r["error_diag"], r["result"], r["is_exception"])
        for r in rows
        if r["status"] in FINAL_STATES
    ]
    return results, [u for u in uids if u not in known]
