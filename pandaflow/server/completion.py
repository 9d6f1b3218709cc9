"""Completion: record what pilots report (and what the watchdog infers) and decide, through
the transitions table, whether an attempt finishes the job, fails it for good, or retries it."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from pandaflow.errorcodes import ErrorCode, describe, is_retryable
from pandaflow.server import dag
from pandaflow.server import schema as s
from pandaflow.server.broker import Broker, BrokerageError
from pandaflow.server.statements import Sql, chunks, insert_sql, marks, update_sql
from pandaflow.server.states import (
    ACTIVE_STATES,
    DISPATCHED,
    FAILED,
    FINAL_STATES,
    FINISHED,
    PRUNED,
    READY,
    RUNNING,
    transition,
)

_J = s.jobs.c
_A = s.attempts.c
_TAIL = 2048


@dataclass(slots=True)
class Completed:
    """What a batch of outcomes changed."""

    notify: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # client -> results
    requeued: set[str] = field(default_factory=set)  # queues that got retried jobs back
    final: int = 0
    retried: int = 0
    stale: int = 0


def outcome(job_id: int, attempt: int, error_code: int, diag: str, **extra: Any) -> dict[str, Any]:
    """A failure outcome produced by the server itself (watchdog, dispatch loss)."""
    return {
        "id": job_id,
        "attempt": attempt,
        "ok": False,
        "error_code": int(error_code),
        "error_diag": diag,
        **extra,
    }


_SELECT_ACTIVE = (
    "SELECT id, uid, status, attempt, max_attempts, client, queue, stdout_tail, pilot_id, dispatched_at,"
    " started_at, cores, memory_mb, walltime_s, memory_multiplier, memory_max_mb, retry_unless_exit"
    " FROM jobs WHERE id IN ({})"
)
_ATTEMPT_COLUMNS = (
    "job_id", "attempt", "pilot_id", "queue", "status", "error_code", "error_diag", "exit_code",
    "dispatched_at", "started_at", "ended_at", "max_rss_mb", "max_pss_mb", "memory_samples",
)  # fmt: skip


def record(
    conn: Connection, outcomes: list[dict[str, Any]], now: float, broker: Broker | None = None
) -> Completed:
    """Apply pilot outcomes (wire maps, see :mod:`pandaflow.protocol`) in the caller's transaction.

    Each outcome of the job's current attempt ends that attempt (one ``attempts`` row) and
    moves the job to finished, failed, or back to ready when the error is retryable and
    attempts are left. Outcomes of an earlier attempt, or of a job that ended, are ignored.
    """
    done = Completed()
    if not outcomes:
        return done
    sql = Sql(conn)
    ids = [o["id"] for o in outcomes]
    jobs: dict[int, dict[str, Any]] = {}
    for part in chunks(ids):
        query = _SELECT_ACTIVE.format(marks(len(part))) + (" FOR UPDATE" if sql.pg else "")
        jobs.update((row["id"], row) for row in sql.maps(query, part))
    moves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    history: list[tuple] = []
    results: list[tuple] = []
    logs: list[tuple] = []
    for o in outcomes:
        job = jobs.get(o["id"])
        if job is None or job["status"] not in ACTIVE_STATES or job["attempt"] != o.get("attempt"):
            done.stale += 1  # a late or duplicate report: the job moved on already
            continue
        code = int(o.get("error_code") or 0)
        diag = o.get("error_diag") or ("" if o.get("ok") else describe(code))
        retry: dict[str, Any] = {}
        if o.get("ok"):
            new = FINISHED
        elif not is_retryable(code) or job["attempt"] >= job["max_attempts"]:
            new = FAILED
        elif _exit_forbids_retry(job, code, o.get("exit_code")):
            new = FAILED
            diag = f"{diag} (exit code {o.get('exit_code')} is never retried)"
        else:
            new = READY
            retry, why_not = _retry_shape(job, code, broker)
            if why_not:
                new = FAILED
                diag = f"{diag}; cannot retry: {why_not}"
        if new == READY:
            grown = f" with {retry['memory_mb']} MB on {retry['queue']}" if retry.get("grown") else ""
            diag = f"attempt {job['attempt']} of {job['max_attempts']} failed, retrying{grown}: {diag}"
            done.requeued.add(retry.get("queue", job["queue"]))
        tail = o.get("tail")
        ctx = {
            "error_code": code,
            "error_diag": diag,
            "exit_code": o.get("exit_code"),
            "stdout_tail": tail[-_TAIL:] if tail is not None else job["stdout_tail"],
            "max_rss_mb": o.get("rss"),
            "max_pss_mb": o.get("pss"),
            "started_at": o.get("t0") or job["started_at"],
            "ended_at": o.get("t1") or now,
        }
        if new == READY:
            ctx["queue"] = retry.get("queue", job["queue"])
            ctx["memory_mb"] = retry.get("memory_mb", job["memory_mb"])
        values = transition(job, new, now, **ctx)
        moves[new].append({"_id": job["id"], "_attempt": job["attempt"], **values})
        job["status"] = new
        samples = o.get("samples")
        samples = o.get("samples")
        history.append(
            (
                job["id"],
                job["attempt"],
                job["pilot_id"],
                job["queue"],
                FINISHED if o.get("ok") else FAILED,
                code,
                o.get("error_diag") or "",
                o.get("exit_code"),
                job["dispatched_at"],
                ctx["started_at"],
                ctx["ended_at"],
                o.get("rss"),
                o.get("pss"),
                json.dumps(samples) if samples else None,
            )
        )
        if o.get("log"):
            logs.append((job["id"], job["attempt"], bytes(o["log"])))
        if new == READY:
            done.retried += 1
            continue
        done.final += 1
        if o.get("result") is not None:
            results.append((job["id"], bytes(o["result"]), bool(o.get("exc"))))
        if job["client"]:
            done.notify[job["client"]].append(
                {
                    "id": job["id"],
                    "uid": job["uid"],
                    "status": new,
                    "error_code": code,
                    "error_diag": diag,
                    "result": o.get("result"),
                    "exc": bool(o.get("exc")),
                }
            )
    for rows in moves.values():
        columns = tuple(k for k in rows[0] if not k.startswith("_"))
        sql.many(
            update_sql("jobs", columns, ("id", "attempt")),
            [(*(r[c] for c in columns), r["_id"], r["_attempt"]) for r in rows],
        )
    sql.many(insert_sql("attempts", _ATTEMPT_COLUMNS), history)
    sql.many(insert_sql("job_results", ("job_id", "result", "is_exception")), results)
    sql.many(insert_sql("job_logs", ("job_id", "attempt", "log")), logs)
    follow_dependencies(conn, moves, now, done)
    return done


def _exit_forbids_retry(job: dict[str, Any], code: int, exit_code: int | None) -> bool:
    """ctrl_bps ``retry_unless_exit``: these exit codes mean retrying cannot help."""
    if code != ErrorCode.PAYLOAD_NONZERO_EXIT or exit_code is None or not job.get("retry_unless_exit"):
        return False
    return exit_code in json.loads(job["retry_unless_exit"])


def _retry_shape(job: dict[str, Any], code: int, broker: Broker | None) -> tuple[dict[str, Any], str]:
    """Memory and queue of the next attempt: after an out-of-memory kill with a multiplier the
    request grows (capped by memory_max_mb) and the job is re-brokered to a queue that holds it.
    Returns (changes, why the job cannot be retried or "")."""
    mult, mem = job.get("memory_multiplier"), job.get("memory_mb")
    if code != ErrorCode.OUT_OF_MEMORY or not mult or mult <= 1 or not mem:
        return {}, ""
    cap = job.get("memory_max_mb")
    grown = math.ceil(mem * mult)
    if cap:
        grown = min(grown, cap)
    if grown <= mem:
        return {}, f"memory request {mem} MB is already at its maximum {cap} MB"
    changes: dict[str, Any] = {"memory_mb": grown, "queue": job["queue"], "grown": True}
    if broker is not None:
        current = broker.queues.get(job["queue"])
        if current is None or current.refusal(grown, job["cores"], job["walltime_s"]):
            # Stay at the job's site (its workflow may be pinned or spread there); leave it only
            # when the site has no queue large enough, rather than fail the job.
            site = current.site if current is not None else None
            try:
                changes["queue"] = broker.choose(grown, job["cores"], job["walltime_s"], site=site)
            except BrokerageError:
                try:
                    changes["queue"] = broker.choose(grown, job["cores"], job["walltime_s"])
                except BrokerageError as exc:
                    return {}, str(exc)
    return changes, ""


def follow_dependencies(
    conn: Connection, moves: dict[str, list[dict[str, Any]]], now: float, done: Completed
) -> None:
    """Release what finished jobs unblock and prune what failed jobs make impossible."""
    finished = [m["_id"] for m in moves.get(FINISHED, ())]
    if finished:
        _released, queues = dag.release(conn, finished, now)
        done.requeued |= queues
    failed = [m["_id"] for m in moves.get(FAILED, ())]
    if failed:
        note_pruned(
            done.notify,
            dag.prune(
                conn, failed, now, "an input can never exist: its producer failed", released=done.requeued
            ),
        )


def note_pruned(notify: dict[str, list[dict[str, Any]]], pruned: list[dict[str, Any]]) -> None:
    """Tell submitting clients that their pruned jobs will never run."""
    for job in pruned:
        if job.get("client"):
            notify[job["client"]].append(
                {"id": job["id"], "uid": job["uid"], "status": PRUNED, "error_code": 0,
                 "error_diag": "pruned: an input can never exist", "result": None, "exc": False}
            )  # fmt: skip


def mark_running(conn: Connection, pilot_id: int, running: dict[int, float], now: float) -> int:
    """Move jobs a pilot reports as running from dispatched to running."""
    if not running:
        return 0
    sql = Sql(conn)
    ids = list(running)
    rows = sql.maps(
        f"SELECT id, status, attempt FROM jobs WHERE id IN ({marks(len(ids))}) AND pilot_id=? AND status=?",
        (*ids, pilot_id, DISPATCHED),
    )
    moves = []
    columns: tuple[str, ...] = ()
    for job in rows:
        values = transition(job, RUNNING, now, started_at=running[job["id"]])
        columns = columns or tuple(values)
        moves.append((*(values[c] for c in columns), job["id"], job["attempt"]))
    sql.many(update_sql("jobs", columns, ("id", "attempt")), moves)
    return len(moves)


def record_progress(conn: Connection, pilot_id: int, progress: dict[str, Any]) -> None:
    """Store the output tail and memory high-water mark a pilot reports for its running jobs
    (``{job_id: [tail, max_rss_mb]}``): logs stream to the monitor while jobs run."""
    rows = []
    for key, value in progress.items():
        try:
            tail, rss = value
            rows.append((str(tail)[-_TAIL:], float(rss) or None, int(key), pilot_id))
        except (TypeError, ValueError):
            continue  # a malformed entry is dropped, not allowed to fail the turn
    Sql(conn).many(
        "UPDATE jobs SET stdout_tail=?, max_rss_mb=?"
        " WHERE id=? AND pilot_id=? AND status IN ('dispatched','running')",
        rows,
    )


def result_of(conn: Connection, uids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
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
        {
            "uid": r["uid"],
            "status": r["status"],
            "error_code": r["error_code"],
            "error_diag": r["error_diag"],
            "result": r["result"],
            "exc": bool(r["is_exception"]),
        }
        for r in rows
        if r["status"] in FINAL_STATES
    ]
    return results, [u for u in uids if u not in known]
