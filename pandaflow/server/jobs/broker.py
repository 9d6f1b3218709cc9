"""Brokerage: choose the queue that fits a job's memory, cores and walltime."""

from __future__ import annotations

from collections.abc import Iterable

from pandaflow.server.jobs.queues import Queue


class BrokerageError(ValueError):
    """No queue can hold the job; the message says why, queue by queue."""


class Broker:
    """Matches job shapes to queues.

    With ``queue`` named, the job goes there if that queue exists and can hold it (brokerage
    off queues take only such jobs). Otherwise the broker picks, among online queues with
    brokerage on, the tightest memory fit (smallest ``max_memory_mb``), then the name. With
    ``site`` given, only that site's queues are considered (which site a job goes to is decided
    by :mod:`pandaflow.server.jobs.sites`).
    """

    def __init__(self, queues: Iterable[Queue]):
        self.queues = {q.name: q for q in queues}
        self.sites = sorted({q.site for q in self.queues.values()})
        self._candidates = sorted(
            (q for q in self.queues.values() if q.brokerage),
            key=lambda q: (q.max_memory_mb, q.name),
        )
        self._cache: dict[tuple, str] = {}

    def choose(
        self,
        memory_mb: int | None,
        cores: int,
        walltime_s: float | None,
        queue: str | None = None,
        site: str | None = None,
    ) -> str:
        """Return the queue name for a job (at ``site``, if given), or raise :class:`BrokerageError`
        saying why none fits."""
        key = (memory_mb, cores, walltime_s, queue, site)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        name = self._choose(memory_mb, cores, walltime_s, queue, site)
        if len(self._cache) < 10_000:
            self._cache[key] = name
        return name

    def _choose(
        self, memory_mb: int | None, cores: int, walltime_s: float | None, queue: str | None, site: str | None
    ) -> str:
        if queue is not None:
            target = self.queues.get(queue)
            if target is None:
                raise BrokerageError(f"unknown queue {queue!r}; known queues: {sorted(self.queues)}")
            if site is not None and target.site != site:
                raise BrokerageError(f"queue {queue!r} is at site {target.site!r}, not at {site!r}")
            why = target.refusal(memory_mb, cores, walltime_s)
            if why:
                raise BrokerageError(why)
            return target.name
        reasons = []
        for candidate in self._candidates:
            if site is not None and candidate.site != site:
                continue
            if not candidate.online:
                reasons.append(f"queue {candidate.name!r} is offline")
                continue
            why = candidate.refusal(memory_mb, cores, walltime_s)
            if why is None:
                return candidate.name
            reasons.append(why)
        where = f" at site {site!r}" if site is not None else ""
        if not reasons:
            raise BrokerageError(f"no queue{where} has brokerage on; name a queue explicitly")
        shape = f"memory={memory_mb or 0} MB, cores={cores}, walltime={walltime_s or 0:g} s"
        raise BrokerageError(f"no queue{where} can hold a job with {shape}: " + "; ".join(reasons))
