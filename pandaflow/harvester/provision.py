"""Acting on a queue through its provider: cancel workers (:func:`cancel`) and submit new ones
(:func:`submit`), pausing a queue's submissions after one failed (:class:`Backoff`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from pandaflow import providers
from pandaflow.harvester import policy
from pandaflow.harvester import workers as w
from pandaflow.harvester.report import QueueReport, say
from pandaflow.server.dispatch import push
from pandaflow.server.jobs.queues import Queue

log = logging.getLogger(__name__)

_MAX_BACKOFF = 600.0


class Backoff:
    """Per queue, no submission before a given time after one failed: two harvester cycles at
    first, doubling with each further failure, up to 10 minutes; a success ends it."""

    def __init__(self) -> None:
        self._queues: dict[str, tuple[float, float, str]] = {}  # queue -> (not before, delay, error)

    def paused(self, queue: str) -> tuple[float, str]:
        """``(not before, the failure)`` of ``queue``; ``(0.0, "")`` if it never failed."""
        until, _delay, failure = self._queues.get(queue, (0.0, 0.0, ""))
        return until, failure

    def failed(self, queue: str, error: str, cycle: float) -> float:
        """A submission to ``queue`` failed with ``error``: pause it; returns the pause in seconds."""
        _until, delay, _failure = self._queues.get(queue, (0.0, 0.0, ""))
        delay = min(_MAX_BACKOFF, max(2 * cycle, 2 * delay))
        self._queues[queue] = (time.time() + delay, delay, error)
        return delay

    def succeeded(self, queue: str) -> None:
        """A submission to ``queue`` went through: no pause any more."""
        self._queues.pop(queue, None)


def cancel(
    engine: Engine, provider: Any, items: list[tuple[w.Worker, str, str]], report: QueueReport
) -> list[int]:
    """Cancel workers through the provider; those it confirms move to their given state."""
    with_job = [item for item in items if item[0].provider_job_id]
    done: list[int] = []
    now = time.time()
    if with_job:
        try:
            results = list(provider.cancel([wk.provider_job_id for wk, _t, _e in with_job]))
        except Exception as exc:
            report.errors.append(f"cancel failed: {say(exc)}")
            return done
        for (wk, _to, _error), ok in zip(with_job, results, strict=False):
            if ok:
                done.append(wk.id)
            else:
                report.errors.append(
                    f"the provider could not cancel worker {wk.id} (job {wk.provider_job_id})"
                )
    done.extend(wk.id for wk, _t, _e in items if not wk.provider_job_id)
    targets = {wk.id: (wk, to, error) for wk, to, error in items}
    with engine.begin() as conn:
        for worker_id in done:
            wk, to, error = targets[worker_id]
            w.move(conn, worker_id, to, now, batch_state="CANCELLED", error=error)
    for worker_id in done:
        if targets[worker_id][0].provider_job_id:
            forget(provider, targets[worker_id][0].provider_job_id)
    if done:
        log.info("harvester: queue %s: cancelled workers %s", items[0][0].queue, done)
    return done


def submit(
    engine: Engine,
    harvester: str,
    queue: Queue,
    limits: policy.Limits,
    provider: Any,
    n: int,
    report: QueueReport,
    *,
    command: Callable[[int], str],
    backoff: Backoff,
    cycle: float,
) -> list[int]:
    """Submit up to ``n`` workers of ``queue`` through ``provider``, each a ``workers`` row first
    (on a push queue its transaction also reserves the worker's jobs) whose id goes into the
    pilot's ``command(worker id)``. The first failure fails its row, pauses the queue's
    submissions (``backoff``, ``cycle`` is the harvester's interval) and ends the round.
    Returns the ids of the workers submitted."""
    submitted = []
    name = queue.setting("provider")["name"]
    for _ in range(n):
        now = time.time()
        reserved: list[int] = []
        with engine.begin() as conn:
            worker_id = w.create(
                conn,
                queue=queue.name,
                harvester=harvester,
                provider=name,
                cores=limits.worker_cores,
                memory_mb=limits.worker_memory_mb,
                now=now,
            )
            if queue.mode == "push":
                # Same transaction as the row: a worker never exists without its jobs, and a
                # failed submission below releases them with the worker (workers.move).
                reserved = push.reserve(
                    conn,
                    worker_id=worker_id,
                    queue=queue.name,
                    cores=limits.worker_cores,
                    memory_mb=limits.worker_memory_mb,
                    now=now,
                )
        line = command(worker_id)
        try:
            job_id = provider.submit(
                line, tasks_per_node=1, job_name=f"pandaflow-{queue.name}-{worker_id}"
            )
            if not job_id:
                raise RuntimeError("the provider returned no job id")
        except Exception as exc:
            error = f"submit failed: {say(exc)}"
            with engine.begin() as conn:
                w.move(conn, worker_id, w.FAILED, time.time(), error=error)
            report.errors.append(f"worker {worker_id}: {error}")
            delay = backoff.failed(queue.name, error, cycle)
            log.warning("harvester: queue %s: %s; next try in %.1f s", queue.name, error, delay)
            break
        job_id = str(job_id)
        with engine.begin() as conn:
            w.accepted(
                conn, worker_id, job_id, json.dumps(providers.bookkeeping(provider, job_id)), time.time()
            )
        backoff.succeeded(queue.name)
        submitted.append(worker_id)
        report.reserved_now += len(reserved)
    if submitted:
        log.info("harvester: queue %s: submitted workers %s", queue.name, submitted)
    return submitted


def forget(provider: Any, job_id: str) -> None:
    """Drop a finished job from the provider's own bookkeeping (parsl never prunes it)."""
    resources = getattr(provider, "resources", None)
    if isinstance(resources, dict):
        resources.pop(job_id, None)
