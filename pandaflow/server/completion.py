"""Completion: record what pilots report (and what the watchdog infers) and decide, through
the transitions table, whether an attempt finishes the job, fails it for good, or retries it."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from pandaflow.pilot.errorcodes import describe, is_retryable
from pandaflow.server import schema as s
from pandaflow.server.statements import ids_param, update_jobs
from pandaflow.server.states import (
    ACTIVE_STATES,
    DISPATCHED,
    FAILED,
    FINAL_STATES,
    FINISHED,
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


_SELECT_ACTIVE = select(
    _J.id,
    _J.uid,
    _J.status,
    _J.attempt,
    _J.max_attempts,
    _J.client,
    _J.queue,
    _J.stdout_tail,
    _J.pilot_id,
    _J.dispatched_at,
    _J.started_at,
).where(_J.id.in_(ids_param()))
_SELECT_ACTIVE_LOCKED = _SELECT_ACTIVE.with_for_update()
_INSERT_ATTEMPTS = insert(s.attempts)
_INSERT_RESULTS = insert(s.job_results)
_INSERT_LOGS = insert(s.job_logs)


def record(conn: Connection, outcomes: list[dict[str, Any]], now: float) -> Completed:
    """Apply pilot outcomes (wire maps, see :mod:`pandaflow.protocol`) in the caller's transaction.

    Each outcome of the job's current attempt ends that attempt (one ``attempts`` row) and
    moves the job to finished, failed, or back to ready when the error is retryable and
    attempts are left. Outcomes of an earlier attempt, or of a job that ended, are ignored.
    """
    done = Completed()
    if not outcomes:
        return done
    query = _SELECT_ACTIVE_LOCKED if conn.dialect.name == "postgresql" else _SELECT_ACTIVE
    jobs = {
        row["id"]: dict(row) for row in conn.execute(query, {"ids": [o["id"] for o in outcomes]}).mappings()
    }
    moves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    history: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    for o in outcomes:
        job = jobs.get(o["id"])
        if job is None or job["status"] not in ACTIVE_STATES or job["attempt"] != o.get("attempt"):
            done.stale += 1  # a late or duplicate report: the job moved on already
            continue
        code = int(o.get("error_code") or 0)
        if o.get("ok"):
            new = FINISHED
        elif is_retryable(code) and job["attempt"] < job["max_attempts"]:
            new = READY
        else:
            new = FAILED
        diag = o.get("error_diag") or ("" if o.get("ok") else describe(code))
        if new == READY:
            diag = f"attempt {job['attempt']} of {job['max_attempts']} failed, retrying: {diag}"
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
        values = transition(job, new, now, **ctx)
        moves[new].append({"_id": job["id"], "_attempt": job["attempt"], **values})
        job["status"] = new
        samples = o.get("samples")
        history.append(
            {
                "job_id": job["id"],
                "attempt": job["attempt"],
                "pilot_id": job["pilot_id"],
                "queue": job["queue"],
                "status": FINISHED if o.get("ok") else FAILED,
                "error_code": code,
                "error_diag": o.get("error_diag") or "",
                "exit_code": o.get("exit_code"),
                "dispatched_at": job["dispatched_at"],
                "started_at": ctx["started_at"],
                "ended_at": ctx["ended_at"],
                "max_rss_mb": o.get("rss"),
                "max_pss_mb": o.get("pss"),
                "memory_samples": json.dumps(samples) if samples else None,
            }
        )
        if o.get("log"):
            logs.append({"job_id": job["id"], "attempt": job["attempt"], "log": bytes(o["log"])})
        if new == READY:
            done.retried += 1
            done.requeued.add(job["queue"])
            continue
        done.final += 1
        if o.get("result") is not None:
            results.append(
                {"job_id": job["id"], "result": bytes(o["result"]), "is_exception": bool(o.get("exc"))}
            )
        if job["client"]:
            done.notify[job["client"]].append(
                {
                    "uid": job["uid"],
                    "status": new,
                    "error_code": code,
                    "error_diag": diag,
                    "result": o.get("result"),
                    "exc": bool(o.get("exc")),
                }
            )
    for rows in moves.values():
        conn.execute(update_jobs(tuple(k for k in rows[0] if not k.startswith("_"))), rows)
    if history:
        conn.execute(_INSERT_ATTEMPTS, history)
    if results:
        conn.execute(_INSERT_RESULTS, results)
    if logs:
        conn.execute(_INSERT_LOGS, logs)
    return done


_SELECT_TO_START = select(_J.id, _J.status, _J.attempt).where(
    _J.id.in_(ids_param()), _J.pilot_id == bindparam("pilot_id"), _J.status == DISPATCHED
)


def mark_running(conn: Connection, pilot_id: int, running: dict[int, float], now: float) -> int:
    """Move jobs a pilot reports as running from dispatched to running."""
    if not running:
        return 0
    moves = []
    for job in conn.execute(_SELECT_TO_START, {"ids": list(running), "pilot_id": pilot_id}).mappings():
        values = transition(dict(job), RUNNING, now, started_at=running[job["id"]])
        moves.append({"_id": job["id"], "_attempt": job["attempt"], **values})
    if moves:
        conn.execute(update_jobs(tuple(k for k in moves[0] if not k.startswith("_"))), moves)
    return len(moves)


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
