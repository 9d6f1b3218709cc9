"""Scaling policy: from a queue's demand and supply, how many workers to submit and which to cancel.

A pure function of its inputs (no database, no provider, no clock), so every rule is testable
on its own:

* **scale out** by ``ceil((ready cores - idle slots) / worker_cores)`` workers, and at least up to
  ``min_workers``; never past ``max_workers`` live workers, ``max_queued_workers`` workers waiting
  in the provider, ``max_new_workers`` per cycle, or the ``submit_per_minute`` rate;
* **scale in** only while the queue has no ready work, down to ``min_workers``: first workers
  whose pilot never came up, once the queue has been without work for ``worker_idle_s`` (newest
  first: the oldest keep their place in a batch queue), then workers whose pilot has been idle
  that long (longest idle first). A harvester cancels only its own workers, and never one that
  still has jobs reserved for it (push queues): those jobs are waiting for that very worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pandaflow.harvester.accounting import Snapshot
from pandaflow.server.jobs.queues import Queue


@dataclass(frozen=True, slots=True)
class Limits:
    """A queue's harvester keys, defaults applied (see :mod:`pandaflow.server.jobs.queues`)."""

    min_workers: int = 0
    max_workers: int = 1
    max_queued_workers: int = 1
    max_new_workers: int = 5
    submit_per_minute: float = 0
    worker_cores: int = 1
    worker_memory_mb: int | None = None
    worker_idle_s: float = 300
    arrival_timeout_s: float = 600

    @classmethod
    def of(cls, queue: Queue) -> Limits:
        return cls(**{name: queue.setting(name) for name in cls.__dataclass_fields__})

    def rate_window(self) -> tuple[int, float] | None:
        """``(n, seconds)``: at most n submissions in any such window; None: no rate limit.

        Rates below one a minute become one per ``60 / rate`` seconds.
        """
        if not self.submit_per_minute:
            return None
        if self.submit_per_minute < 1:
            return 1, 60.0 / self.submit_per_minute
        return int(self.submit_per_minute), 60.0


@dataclass(slots=True)
class Decision:
    """What one cycle does to a queue, and why (the reason is shown to operators)."""

    submit: int = 0
    cancel: list[int] = field(default_factory=list)  # worker ids
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def decide(
    limits: Limits,
    snap: Snapshot,
    *,
    harvester: str,
    recent_submissions: int = 0,
    pilot_idle_s: Mapping[int, float] | None = None,
    quiet_s: float = 0.0,
) -> Decision:
    """Decide submissions and cancellations for one queue.

    ``recent_submissions``: workers of the queue submitted within the rate window;
    ``pilot_idle_s``: how long each active pilot (by id) has held no job;
    ``quiet_s``: how long the queue has had no ready job its pilots could take.
    """
    decision = Decision()
    live = len(snap.workers)
    shortfall = snap.ready_cores - snap.idle_slots
    need = math.ceil(shortfall / limits.worker_cores) if shortfall > 0 else 0
    floor = max(0, limits.min_workers - live)
    want = max(need, floor)
    if need:
        decision.reasons.append(
            f"{snap.ready_jobs} ready jobs need {snap.ready_cores} slots, {snap.idle_slots} free or coming: "
            f"{need} more workers"
        )
    elif floor:
        decision.reasons.append(f"{live} workers, min_workers is {limits.min_workers}")
    if want:
        caps = {
            "max_workers": limits.max_workers - live,
            "max_queued_workers": limits.max_queued_workers - snap.queued_workers,
            "max_new_workers": limits.max_new_workers,
        }
        window = limits.rate_window()
        if window is not None:
            caps["submit_per_minute"] = window[0] - recent_submissions
        room = max(0, min(caps.values()))
        decision.submit = min(want, room)
        if decision.submit < want:
            binding = min(caps, key=lambda k: caps[k])
            decision.reasons.append(f"submitting {decision.submit}: held back by {binding}")
    if snap.ready_jobs or not limits.worker_idle_s:
        return decision
    excess = live - limits.min_workers
    if excess <= 0:
        return decision
    own = [wk for wk in snap.workers if wk.harvester == harvester and not snap.reserved_cores(wk)]
    if quiet_s >= limits.worker_idle_s:
        pending = sorted((wk for wk in own if snap.pending(wk)), key=lambda wk: -wk.submitted_at)
        for wk in pending[:excess]:
            decision.cancel.append(wk.id)
        if decision.cancel:
            decision.reasons.append(
                f"no work for {quiet_s:.0f} s: cancelling {len(decision.cancel)} workers without a pilot"
            )
    idle = pilot_idle_s or {}
    serving = [
        wk for wk in own
        if snap.serving(wk) and snap.pilots[wk.pilot_id].held_cores == 0
        and idle.get(wk.pilot_id, 0.0) >= limits.worker_idle_s
    ]  # fmt: skip
    serving.sort(key=lambda wk: -idle[wk.pilot_id])
    scale_in = serving[: excess - len(decision.cancel)]
    if scale_in:
        decision.cancel.extend(wk.id for wk in scale_in)
        decision.reasons.append(
            f"scaling in {len(scale_in)} pilots idle for {limits.worker_idle_s:g} s or more"
        )
    return decision
