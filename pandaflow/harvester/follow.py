"""Following a queue's live workers: ask the provider for their batch jobs' states, move the
worker rows accordingly, and pick out the workers that went wrong (:func:`follow_workers`).

A job that ended without its pilot registering makes its worker ``missing``; a pilot that did not
register within ``arrival_timeout_s`` of its job starting, or one that stopped heartbeating while
its job still runs, gets its worker cancelled (by the caller, :func:`.provision.cancel`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine

from pandaflow import providers
from pandaflow.harvester import policy
from pandaflow.harvester import workers as w
from pandaflow.harvester.provision import forget
from pandaflow.server.jobs import pilots as pilot_registry
from pandaflow.server.jobs.queues import Queue

_TAIL = 1500  # characters of a failed job's stderr kept in the worker's error


def follow_workers(
    engine: Engine, harvester: str, queue: Queue, limits: policy.Limits, provider: Any
) -> list[tuple[w.Worker, str, str]]:
    """Move ``harvester``'s live workers of ``queue`` to what ``provider`` (or their pilot) says of
    them; return those to cancel: ``(worker, state to move it to once cancelled, why)``."""
    now = time.time()
    with engine.connect() as conn:
        own = w.live(conn, queue=queue.name, harvester=harvester)
        pilot_state = pilot_registry.states(conn, [wk.pilot_id for wk in own if wk.pilot_id is not None])
    moves: list[tuple[w.Worker, str, str | None, str | None]] = []  # worker, to, batch state, error
    cancels: list[tuple[w.Worker, str, str]] = []
    tracked: list[w.Worker] = []
    for wk in own:
        if wk.provider_job_id is None:
            if now - wk.submitted_at > limits.arrival_timeout_s:
                moves.append((wk, w.MISSING, None, "the provider never confirmed the submission"))
        elif providers.adopt(provider, wk.provider_job_id, _json(wk.provider_data)):
            tracked.append(wk)
        else:
            moves.extend(_untracked(wk, pilot_state.get(wk.pilot_id), now, limits))
    statuses = list(provider.status([wk.provider_job_id for wk in tracked])) if tracked else []
    for wk, status in zip(tracked, statuses, strict=True):
        batch = status.state.name
        pilot = pilot_state.get(wk.pilot_id)
        if status.terminal:
            moves.append((wk, *_ended(wk, status)))
            continue
        if batch == "RUNNING" and wk.state == w.SUBMITTED:
            moves.append((wk, w.RUNNING, batch, None))
            wk = _started(wk, now)
        elif batch != wk.batch_state:
            moves.append((wk, wk.state, batch, None))
        # Waiting in a batch queue (PENDING, HELD) is normal and bounded by max_queued_workers;
        # the clock runs once the job started, or from submission if the provider cannot tell.
        since = wk.started_at or (wk.submitted_at if batch == "UNKNOWN" else None)
        if wk.pilot_id is None and since and now - since > limits.arrival_timeout_s:
            why = (
                f"its pilot did not register within {limits.arrival_timeout_s:g} s of the {wk.provider} "
                f"job {wk.provider_job_id} {'starting' if wk.started_at else 'being submitted'}"
            )
            cancels.append((wk, w.MISSING, why))
        elif pilot == pilot_registry.LOST:
            cancels.append((wk, w.FAILED, f"its pilot {wk.pilot_id} stopped heartbeating; job cancelled"))
    with engine.begin() as conn:
        for wk, to, batch, error in moves:
            if to == wk.state:
                w.note(conn, wk.id, now, batch_state=batch or "")
            else:
                w.move(conn, wk.id, to, now, batch_state=batch, error=error)
    for wk, to, _b, _e in moves:
        if to not in w.LIVE_STATES and wk.provider_job_id:
            forget(provider, wk.provider_job_id)
    return cancels


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _started(wk: w.Worker, now: float) -> w.Worker:
    return replace(wk, state=w.RUNNING, started_at=wk.started_at or now)


def _tail(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f"; stderr ends: {text}" if text else ""


def _ended(wk: w.Worker, status: Any) -> tuple[str, str, str | None]:
    """(state, batch state, error) of a worker whose provider job reached a terminal state."""
    batch = status.state.name
    how = batch.lower() + (f" with exit code {status.exit_code}" if status.exit_code is not None else "")
    if status.message:
        how += f" ({status.message})"
    if wk.pilot_id is None:
        error = f"the {wk.provider} job {wk.provider_job_id} ended ({how}) before its pilot registered"
        return w.MISSING, batch, error + _tail(status.stderr_path)
    if batch == "FAILED":
        return (
            w.FAILED,
            batch,
            f"the {wk.provider} job {wk.provider_job_id} failed ({how})" + _tail(status.stderr_path),
        )
    if batch == "CANCELLED":
        return (
            w.CANCELLED,
            batch,
            f"the {wk.provider} job {wk.provider_job_id} was cancelled outside the harvester",
        )
    return w.FINISHED, batch, None


def _untracked(
    wk: w.Worker, pilot: str | None, now: float, limits: policy.Limits
) -> list[tuple[w.Worker, str, str | None, str | None]]:
    """A worker the provider cannot follow (e.g. submitted by an earlier harvester run through a
    provider that keeps no bookkeeping): its pilot tells what became of it."""
    if pilot == pilot_registry.EXITED:
        return [(wk, w.FINISHED, None, None)]
    if pilot == pilot_registry.LOST:
        return [(wk, w.FAILED, None, f"its pilot {wk.pilot_id} stopped heartbeating")]
    if pilot is None and now - wk.submitted_at > limits.arrival_timeout_s:
        return [(wk, w.MISSING, None, "the provider lost track of the job and no pilot registered from it")]
    return []
