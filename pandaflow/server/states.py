"""Job states and the transitions table.

Every change of a job's state goes through :func:`transition`, which looks the pair up in
``TRANSITIONS`` (``(from, to) -> handler``, in the style of dask.distributed's scheduler).
A handler returns the column values the move sets; pairs not in the table are illegal and
raise :class:`IllegalTransition`, so retries, cancellation and accounting cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PENDING = "pending"
READY = "ready"
RESERVED = "reserved"
DISPATCHED = "dispatched"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
PRUNED = "pruned"
HELD = "held"

ALL_STATES = (PENDING, READY, RESERVED, DISPATCHED, RUNNING, FINISHED, FAILED, CANCELLED, PRUNED, HELD)
FINAL_STATES = frozenset({FINISHED, FAILED, CANCELLED, PRUNED})
ACTIVE_STATES = frozenset({DISPATCHED, RUNNING})  # a pilot holds the job

# pandaflow state -> (PanDA job status, BPS WmsStates name)
EXTERNAL_NAMES: dict[str, tuple[str, str]] = {
    PENDING: ("defined", "UNREADY"),
    READY: ("activated", "READY"),
    # Push queues: held for the harvester worker submitted for it (PanDA: picked up by Harvester,
    # the worker is on its way); for BPS it waits in a batch queue, like a dispatched job.
    RESERVED: ("starting", "PENDING"),
    DISPATCHED: ("sent", "PENDING"),
    RUNNING: ("running", "RUNNING"),
    FINISHED: ("finished", "SUCCEEDED"),
    FAILED: ("failed", "FAILED"),
    CANCELLED: ("cancelled", "DELETED"),
    PRUNED: ("missing", "PRUNED"),
    HELD: ("holding", "HELD"),
}


class IllegalTransition(RuntimeError):
    """A state change that the transitions table does not allow."""

    def __init__(self, job_id: Any, old: str, new: str):
        super().__init__(f"job {job_id}: illegal transition {old!r} -> {new!r}")
        self.job_id, self.old, self.new = job_id, old, new


Values = dict[str, Any]
Handler = Callable[[dict[str, Any], float, dict[str, Any]], Values]


def _release(job: dict, now: float, ctx: dict) -> Values:
    return {"status": READY, "updated_at": now}


def _reserve(job: dict, now: float, ctx: dict) -> Values:
    """Push queues: the job waits for one harvester worker's pilot and no other."""
    return {"status": RESERVED, "worker_id": ctx["worker_id"], "updated_at": now}


def _unreserve(job: dict, now: float, ctx: dict) -> Values:
    """The worker ended (or never came) without taking the job: any pilot may have it again."""
    return {"status": READY, "worker_id": None, "updated_at": now}


def _dispatch(job: dict, now: float, ctx: dict) -> Values:
    return {
        "status": DISPATCHED,
        "pilot_id": ctx["pilot_id"],
        "attempt": job["attempt"] + 1,
        "dispatched_at": now,
        "started_at": None,
        "ended_at": None,
        "updated_at": now,
    }


def _start(job: dict, now: float, ctx: dict) -> Values:
    return {"status": RUNNING, "started_at": ctx.get("started_at", now), "updated_at": now}


def _end(status: str) -> Handler:
    def handler(job: dict, now: float, ctx: dict) -> Values:
        return {
            "status": status,
            "error_code": ctx.get("error_code", 0),
            "error_diag": ctx.get("error_diag", ""),
            "exit_code": ctx.get("exit_code"),
            "stdout_tail": ctx.get("stdout_tail", job.get("stdout_tail", "")),
            "max_rss_mb": ctx.get("max_rss_mb"),
            "max_pss_mb": ctx.get("max_pss_mb"),
            "started_at": ctx.get("started_at", job.get("started_at")),
            "ended_at": ctx.get("ended_at", now),
            "updated_at": now,
        }

    handler.__name__ = f"_end_{status}"
    return handler


def _retry(job: dict, now: float, ctx: dict) -> Values:
    """A failed attempt with attempts left goes back to the ready queue, possibly re-brokered
    with a larger memory request (the attempt itself is kept in the attempts table)."""
    values = _end(READY)(job, now, ctx)
    values["pilot_id"] = None
    values["worker_id"] = None  # a push queue reserves the next attempt afresh
    values["queue"] = ctx.get("queue", job.get("queue"))
    values["memory_mb"] = ctx.get("memory_mb", job.get("memory_mb"))
    values["started_at"] = values["ended_at"] = None  # the job waits; its next attempt has not begun
    return values


def _cancel(job: dict, now: float, ctx: dict) -> Values:
    return {
        "status": CANCELLED,
        "error_code": ctx.get("error_code", job.get("error_code", 0)),
        "error_diag": ctx.get("error_diag", "cancelled by user"),
        "ended_at": now,
        "updated_at": now,
    }


def _prune(job: dict, now: float, ctx: dict) -> Values:
    return {
        "status": PRUNED,
        "error_diag": ctx.get("error_diag", "an input can never exist"),
        "updated_at": now,
    }


def _hold(job: dict, now: float, ctx: dict) -> Values:
    return {"status": HELD, "updated_at": now}


def _resubmit(status: str) -> Handler:
    """A user retry of a job that ended: a fresh budget of attempts on top of those used. It
    waits (pending) when some of its inputs are not available again, e.g. after a restart."""

    def handler(job: dict, now: float, ctx: dict) -> Values:
        return {
            "status": status,
            "max_attempts": job["attempt"] + ctx.get("extra_attempts", 1),
            "error_code": 0,
            "error_diag": "",
            "exit_code": None,
            "pilot_id": None,
            "worker_id": None,
            "ended_at": None,
            "updated_at": now,
        }

    handler.__name__ = f"_resubmit_{status}"
    return handler


def _revive(job: dict, now: float, ctx: dict) -> Values:
    """A pruned job whose missing input will be produced after all (its producer is retried)."""
    return {"status": PENDING, "error_diag": "", "updated_at": now}


TRANSITIONS: dict[tuple[str, str], Handler] = {
    (PENDING, READY): _release,
    (HELD, READY): _release,
    (READY, DISPATCHED): _dispatch,
    (READY, RESERVED): _reserve,
    (RESERVED, DISPATCHED): _dispatch,
    (RESERVED, READY): _unreserve,
    (RESERVED, CANCELLED): _cancel,
    (DISPATCHED, RUNNING): _start,
    (DISPATCHED, FINISHED): _end(FINISHED),
    (RUNNING, FINISHED): _end(FINISHED),
    (DISPATCHED, FAILED): _end(FAILED),
    (RUNNING, FAILED): _end(FAILED),
    (DISPATCHED, READY): _retry,
    (RUNNING, READY): _retry,
    (PENDING, CANCELLED): _cancel,
    (READY, CANCELLED): _cancel,
    (DISPATCHED, CANCELLED): _cancel,
    (RUNNING, CANCELLED): _cancel,
    (HELD, CANCELLED): _cancel,
    (PENDING, PRUNED): _prune,
    (READY, PRUNED): _prune,
    (HELD, PRUNED): _prune,
    (PENDING, HELD): _hold,
    (READY, HELD): _hold,
    (FAILED, READY): _resubmit(READY),
    (CANCELLED, READY): _resubmit(READY),
    (FAILED, PENDING): _resubmit(PENDING),
    (CANCELLED, PENDING): _resubmit(PENDING),
    # An 'always' job (runs whatever its inputs' outcome) runs again when its inputs are re-run.
    (FINISHED, PENDING): _resubmit(PENDING),
    (PRUNED, PENDING): _revive,
}


def transition(job: dict[str, Any], new: str, now: float, **ctx: Any) -> Values:
    """Return the column values that move ``job`` (a row mapping) to state ``new``.

    Raises :class:`IllegalTransition` when the pair is not in the table.
    """
    old = job["status"]
    handler = TRANSITIONS.get((old, new))
    if handler is None:
        raise IllegalTransition(job.get("id"), old, new)
    return handler(job, now, ctx)


def allowed_sources(new: str) -> frozenset[str]:
    """The states from which a job may move to ``new``."""
    return frozenset(old for (old, to) in TRANSITIONS if to == new)
