"""Completion: record what pilots report (and what the watchdog infers) and decide, through
the transitions table, whether an attempt finishes the job, fails it for good, or retries it."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from pandaflow.pilot.errorcodes import ErrorCode, is_retryable
from pandaflow.server import schema as s
from pandaflow.server.states import ACTIVE_STATES, FAILED, FINAL_STATES, FINISHED, READY, RUNNING, transition

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


def record(conn: Connection, outcomes: list[dict[str, Any]], now: float) -> Completed:
    """Apply pilot outcomes (wire maps, see :mod:`pandaflow.protocol`) in the caller's transaction."""
    done = Completed()
    if not outcomes:
        return done
    query = select(
        _J.id,
        _J.uid,
        _J.status,
        _J.attempt,
        _J.max_attempts,
        _J.client,
        _J.queue,
        _J.stdout_tail,
        _J.started_at,
    ).where(_J.id.in_([o["id"] for o in outcomes]))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    jobs = {row["id"]: dict(row) for row in conn.execute(query).mappings()}
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
        diag = o.get("error_diag") or (
            "" if o.get("ok") else ErrorCode(code).name if code in ErrorCode else ""
        )
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
        history.append(
            {
                "_job": job["id"],
                "_attempt": job["attempt"],
                "status": FINISHED if o.get("ok") else FAILED,
                "error_code": code,
                "error_diag": o.get("error_diag") or "",
                "exit_code": o.get("exit_code"),
                "started_at": ctx["started_at"],
                "ended_at": ctx["ended_at"],
                "max_rss_mb": o.get("rss"),
                "max_pss_mb": o.get("pss"),
                "memory_samples": json.dumps(o["samples"]) if o.get("samples") else None,
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
        columns = [k for k in rows[0] if not k.startswith("_")]
        conn.execute(
            update(s.jobs)
            .where(_J.id == bindparam("_id"), _J.attempt == bindparam("_attempt"))
            .values({k: bindparam(k) for k in columns}),
            rows,
        )
    if history:
        conn.execute(
            update(s.attempts)
            .where(_A.job_id == bindparam("_job"), _A.attempt == bindparam("_attempt"))
            .values({k: bindparam(k) for k in history[0] if not k.startswith("_")}),
            history,
        )
    if results:
        conn.execute(insert(s.job_results), results)
    if logs:
        conn.execute(insert(s.job_logs), logs)
    return done


def mark_running(conn: Connection, pilot_id: int, running: dict[int, float], now: float) -> int:
    """Move jobs a pilot reports as running from dispatched to running."""
    if not running:
        return 0
    ids = list(running)
    rows = conn.execute(
        select(_J.id, _J.status, _J.attempt).where(
            _J.id.in_(ids), _J.pilot_id == pilot_id, _J.status != RUNNING
        )
    ).mappings()
    moves = []
    for job in rows:
        if job["status"] not in ACTIVE_STATES:
            continue
        values = transition(dict(job), RUNNING, now, started_at=running[job["id"]])
        moves.append({"_id": job["id"], "_attempt": job["attempt"], **values})
    if moves:
        conn.execute(
            update(s.jobs)
            .where(_J.id == bindparam("_id"), _J.attempt == bindparam("_attempt"))
            .values({k: bindparam(k) for k in moves[0] if not k.startswith("_")}),
            moves,
        )
        conn.execute(
            update(s.attempts)
            .where(_A.job_id == bindparam("_id"), _A.attempt == bindparam("_attempt"))
            .values(status=RUNNING, started_at=bindparam("started_at")),
            [{"_id": m["_id"], "_attempt": m["_attempt"], "started_at": m["started_at"]} for m in moves],
        )
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
