"""Allocation: which waiting pilot gets which ready jobs, and when to ask prefetched jobs back.

Pilots ask for work (``want``): ``n`` jobs, ``free`` of which would start at once; the rest is
prefetch (held so that a pilot of short jobs never idles between two messages). A request that
cannot be filled stands until work arrives. Each dispatcher turn:

1. jobs reserved for a push-queue pilot's worker go to it first (:mod:`pandaflow.server.dispatch.push`);
2. every waiting pilot's *free slots* are served, highest priority first, FIFO among equals;
3. only then, with what is left, their *prefetch*: a job waits in one pilot's prefetch only
   while no other pilot of its queue has a free slot for it;
4. a pilot that still has free slots and found nothing ready asks back jobs other pilots of
   its queue hold unstarted in prefetch (``reclaim``); they return what they have not started
   (``returned``, the attempt given back) and it goes to the free pilot.

A pilot that found nothing marks its shape (cores, memory) as *exhausted* for the queue until
the queue gets new work: a pilot no larger is not asked again, a larger one is (a 2-core pilot
is not passed over because a 1-core pilot found no 1-core job).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from pandaflow import protocol
from pandaflow.server.dispatch import assignment, push

RECLAIM_AFTER = 0.02  # a job dispatched this recently is on its way to start: not asked back
RECLAIM_PATIENCE = 5.0  # a job asked back this long ago without an answer may be asked again

Outbox = list[tuple[bytes, Any]]


@dataclass(slots=True)
class Standing:
    """A pilot's unfilled request for work: ``n`` jobs, of which ``free`` would start at once."""

    pilot_id: int
    queue: str
    n: int
    cores: int | None
    memory_mb: int | None
    free: int = 0

    def fits_within(self, cores: int | None, memory_mb: int | None) -> bool:
        """True when every job this pilot can hold would also fit ``cores``/``memory_mb``."""
        return _at_most(self.cores, cores) and _at_most(self.memory_mb, memory_mb)


def _at_most(mine: int | None, other: int | None) -> bool:
    if other is None:  # unlimited
        return True
    return mine is not None and mine <= other


class Allocator:
    """The standing requests of one dispatcher, and the passes that fill them."""

    def __init__(self, queues: Iterable[str], push_queues: Iterable[str]):
        self.waiting: dict[bytes, Standing] = {}
        self.queues = set(queues)
        self.push_queues = set(push_queues)
        self.maybe_ready: set[str] = set(self.queues)
        # Per queue, the pilot shapes that found nothing since the queue last got work.
        self.exhausted: dict[str, list[tuple[int | None, int | None]]] = defaultdict(list)
        self.reclaiming: dict[int, float] = {}  # job id -> when it was asked back
        self.push_due: set[bytes] = set()  # push-queue pilots that asked this turn
        self.dispatched = 0
        self.reclaimed = 0

    def want(self, identity: bytes, pilot_id: int, queue: str, want: protocol.Want | None) -> None:
        """Record what the pilot asks for now (replacing what it asked before)."""
        if want is None:
            return
        if want.n <= 0:
            self.waiting.pop(identity, None)
            return
        standing = Standing(
            pilot_id, queue, want.n, want.cores, want.memory_mb, min(want.n, max(0, want.free))
        )
        self.waiting[identity] = standing
        if not self._dominated(standing):
            self.maybe_ready.add(queue)  # a pilot larger than those that found nothing: look again
        if queue in self.push_queues:
            # A harvester (unseen here) may have reserved jobs for its worker: look this turn,
            # whatever other pilots of the queue found.
            self.push_due.add(identity)

    def forget(self, identity: bytes) -> None:
        self.waiting.pop(identity, None)

    def ready(self, queues: Iterable[str]) -> None:
        """These queues got ready work: every waiting pilot of theirs is worth asking again."""
        for queue in queues:
            if queue:
                self.maybe_ready.add(queue)
                self.exhausted.pop(queue, None)

    def rescan(self, now: float) -> None:
        """The periodic look at every queue (work may have arrived unannounced, e.g. from another
        process), and forget asks-back that were never answered."""
        self.ready(self.queues)
        self.reclaiming = {j: t for j, t in self.reclaiming.items() if t > now - RECLAIM_PATIENCE}

    def returned(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            self.reclaiming.pop(job_id, None)

    def serve(
        self,
        conn: Connection,
        now: float,
        outbox: Outbox,
        payloads: MutableMapping[int, bytes],
        holders: dict[int, bytes],
    ) -> None:
        """Fill what can be filled (push reservations, free slots, prefetch), then ask back
        prefetched jobs for pilots left with free slots. ``holders`` maps pilot ids to their
        identities (for the asks-back); replies go to ``outbox``."""
        self._serve_reserved(conn, now, outbox, payloads)
        if not self.waiting or not self.maybe_ready:
            return
        for prefetch in (False, True):
            for identity, want in list(self.waiting.items()):
                if want.queue not in self.maybe_ready:
                    continue
                n = want.n - want.free if prefetch else want.free
                if n <= 0 or self._dominated(want):
                    continue
                jobs = assignment.assign(
                    conn, pilot_id=want.pilot_id, queue=want.queue, n=n, cores=want.cores,
                    memory_mb=want.memory_mb, now=now, payload_cache=payloads,
                )  # fmt: skip
                if len(jobs) < n:
                    self.exhausted[want.queue].append((want.cores, want.memory_mb))
                self._hand(identity, want, jobs, outbox)
        for queue in list(self.maybe_ready):
            if all(self._dominated(w) for w in self.waiting.values() if w.queue == queue):
                self.maybe_ready.discard(queue)  # nothing there for anyone waiting: until new work
        self._reclaim(conn, now, outbox, holders)

    def _dominated(self, want: Standing) -> bool:
        return any(want.fits_within(c, m) for c, m in self.exhausted.get(want.queue, ()))

    def _serve_reserved(self, conn: Connection, now: float, outbox: Outbox, payloads) -> None:
        """Push queues: a pilot that asked this turn gets the jobs reserved for its worker first,
        whatever other pilots of the queue found; the usual passes then fill the rest."""
        for identity in self.push_due:
            want = self.waiting.get(identity)
            if want is not None:
                jobs = push.take(conn, pilot_id=want.pilot_id, n=want.n, now=now, payload_cache=payloads)
                self._hand(identity, want, jobs, outbox)
        self.push_due.clear()

    def _reclaim(self, conn: Connection, now: float, outbox: Outbox, holders: dict[int, bytes]) -> None:
        for want in [w for w in self.waiting.values() if w.free > 0]:
            rows = assignment.prefetched(
                conn, queue=want.queue, other_than=want.pilot_id, n=want.free + len(self.reclaiming),
                cores=want.cores, memory_mb=want.memory_mb, before=now - RECLAIM_AFTER,
            )  # fmt: skip
            asks: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
            asked = 0
            for row in rows:
                holder = holders.get(row["pilot_id"])
                if holder is None or row["id"] in self.reclaiming:
                    continue
                if asked >= want.free:
                    break
                asks[holder].append((row["id"], row["attempt"]))
                self.reclaiming[row["id"]] = now
                asked += 1
            for holder, jobs in asks.items():
                outbox.append((holder, protocol.Reclaim(jobs=jobs)))
                self.reclaimed += len(jobs)

    def _hand(self, identity: bytes, want: Standing, jobs: list[protocol.Payload], outbox: Outbox) -> None:
        """Send dispatched jobs to the pilot; its request stands for what is still wanted."""
        if jobs:
            outbox.append((identity, protocol.Jobs(jobs=jobs)))
            self.dispatched += len(jobs)
            want.n -= len(jobs)
            want.free = max(0, want.free - len(jobs))
        if want.n <= 0:
            del self.waiting[identity]
