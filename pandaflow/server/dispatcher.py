"""The ZeroMQ dispatcher: the hot path between executors, pilots and the database.

One thread owns a ROUTER socket. Each turn of its loop drains every message waiting, applies
them all in one database transaction (submissions first, then results, heartbeats and job
requests), commits, and only then replies: an acknowledged submission or result is durable.
Pilot job requests that cannot be filled stay standing and are served as soon as work
arrives, which keeps dispatch latency at one loop turn. On push queues a pilot's request is
served first from the jobs reserved for its harvester worker (:mod:`pandaflow.server.push`).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import zmq
from sqlalchemy import Engine, select

from pandaflow import protocol
from pandaflow.server import assignment, completion, pilots, push, submission, watchdog
from pandaflow.server import schema as s
from pandaflow.server.broker import Broker
from pandaflow.server.statements import claim_writes
from pandaflow.server.states import ACTIVE_STATES

log = logging.getLogger(__name__)

_OP_ORDER = {
    "register": 0,
    "submit": 1,
    "started": 2,
    "returned": 3,
    "results": 4,
    "heartbeat": 5,
    "sync": 6,
    "ping": 7,
    "request": 8,
    "bye": 9,
}
_MAX_DRAIN = 4000
_RECLAIM_AFTER = 0.02  # a job dispatched this recently is on its way to start: not asked back
_RECLAIM_PATIENCE = 5.0  # a job asked back this long ago without an answer may be asked again
_PAYLOAD_CACHE_BYTES = 256 << 20


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


class Dispatcher:
    """Serves the ZeroMQ protocol of :mod:`pandaflow.protocol` on ``endpoint``."""

    def __init__(
        self,
        engine: Engine,
        broker: Broker,
        token: str,
        endpoint: str = "tcp://127.0.0.1:0",
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float | None = None,
    ):
        self.engine = engine
        self.broker = broker
        self.token = token.encode()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout or max(3 * heartbeat_interval, 10.0)
        self.epoch = uuid.uuid4().hex
        self.ctx = zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        if endpoint.endswith(":0"):
            port = self.router.bind_to_random_port(endpoint.rsplit(":", 1)[0])
            self.endpoint = f"{endpoint.rsplit(':', 1)[0]}:{port}"
        else:
            self.router.bind(endpoint)
            self.endpoint = endpoint
        self._control_addr = f"inproc://pandaflow-control-{self.epoch}"
        self.control = self.ctx.socket(zmq.PULL)
        self.control.bind(self._control_addr)
        self._local = threading.local()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waiting: dict[bytes, Standing] = {}
        self.pilot_of: dict[bytes, tuple[int, str]] = {}
        self.maybe_ready: set[str] = set(broker.queues)
        # Per queue, the pilot shapes (cores, memory) that found nothing ready since the queue last
        # got work: a pilot no larger than one of them is not asked again; a larger one is.
        self.exhausted: dict[str, list[tuple[int | None, int | None]]] = defaultdict(list)
        # Prefetched jobs asked back from their pilot for an idle one: job id -> time asked.
        self.reclaiming: dict[int, float] = {}
        self.push_queues = {q.name for q in broker.queues.values() if q.mode == "push"}
        # Push-queue pilots that asked for work this turn: jobs may be reserved for their worker.
        self.push_due: set[bytes] = set()
        self.book = submission.WorkflowBook()
        self._next_sweep = time.time() + self.heartbeat_interval
        self.stats = defaultdict(int)
        self.payloads: dict[int, bytes] = {}
        self._conn = None
        self.payload_bytes = 0
        self.pilot_counts: dict[int, tuple[int, int]] = {}

    # ---------------------------------------------------------------- thread control
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="pandaflow-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.poke({"kind": "stop"})
        if self._thread is not None:
            self._thread.join(10)
        self.router.close(0)
        self.control.close(0)
        if self._conn is not None:
            self._conn.close()

    def poke(self, message: dict[str, Any]) -> None:
        """Thread-safe: hand the loop a control message (new ready work, kills, notifications)."""
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(self._control_addr)
            self._local.push = sock
        sock.send(protocol.encode(message))

    # ---------------------------------------------------------------- loop
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        while not self._stop.is_set():
            timeout = max(0.0, self._next_sweep - time.time())
            try:
                events = dict(poller.poll(int(timeout * 1000) + 1))
            except zmq.ZMQError:
                if self._stop.is_set():
                    break
                raise
            batch: list[tuple[bytes, dict[str, Any]]] = []
            controls: list[dict[str, Any]] = []
            if self.router in events:
                self._drain_router(batch)
            if self.control in events:
                while True:
                    try:
                        controls.append(protocol.decode(self.control.recv(zmq.NOBLOCK)))
                    except zmq.Again:
                        break
            if self._stop.is_set():
                break
            sweep = time.time() >= self._next_sweep
            if batch or controls or sweep:
                self.turn(batch, controls, sweep)

    def _drain_router(self, batch: list[tuple[bytes, dict[str, Any]]]) -> None:
        for _ in range(_MAX_DRAIN):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            identity, frame = frames
            try:
                message = protocol.decode(frame)
            except ValueError as exc:
                self._send(identity, {"op": "error", "message": str(exc)})
                continue
            token = message.get("tok")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.token):
                self.stats["auth_failures"] += 1
                self._send(
                    identity, {"op": "error", "message": "authentication failed: wrong or missing token"}
                )
                continue
            batch.append((identity, message))

    def turn(
        self, batch: list[tuple[bytes, dict[str, Any]]], controls: list[dict[str, Any]], sweep: bool
    ) -> None:
        """Apply one batch of messages in one transaction, then reply."""
        outbox: list[tuple[bytes, dict[str, Any]]] = []
        notify: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for control in controls:
            self._control(control, outbox, notify)
        self._flush(outbox, notify)
        batch.sort(key=lambda item: _OP_ORDER.get(item[1].get("op"), 99))
        try:
            self._apply(batch, sweep, outbox, notify)
        except Exception as exc:
            # Nothing was committed: submitters and pilots got no ack and will resend.
            log.exception("dispatcher turn failed; rolled back %d messages", len(batch))
            self.book.forget()
            self.stats["rollbacks"] += 1
            outbox.clear()
            notify.clear()
            if len(batch) > 1:
                for item in batch:  # isolate the message that fails, so the others go through
                    self.turn([item], [], False)
            elif batch:
                identity, message = batch[0]
                if message.get("op") == "submit" and isinstance(message.get("client"), str):
                    identity = message["client"].encode()  # executors read replies on their main socket
                error = f"server failed to process {message.get('op')!r}: {type(exc).__name__}: {exc}"
                reply = {"op": "submitted", "batch": message.get("batch"), "error": error}
                self._send(
                    identity, reply if message.get("op") == "submit" else {"op": "error", "message": error}
                )
            return
        self._flush(outbox, notify)

    def _apply(self, batch, sweep: bool, outbox, notify) -> None:
        now = time.time()
        if self._conn is None or self._conn.closed:
            # One connection for the loop's life: no pool checkout and reset on every turn.
            self._conn = self.engine.connect()
        conn = self._conn
        try:
            with conn.begin():
                self._apply_in(conn, batch, sweep, outbox, notify, now)
        except Exception:
            self._conn.close()
            self._conn = None
            raise

    def _apply_in(self, conn, batch, sweep: bool, outbox, notify, now: float) -> None:
        claim_writes(conn)  # a turn reads jobs and products, then writes what follows from them
        beats: list[int] = []
        submits = [item for item in batch if item[1].get("op") == "submit"]
        if submits:
            self._submit_all(conn, submits, now, outbox)
        for identity, message in batch:
            if message.get("op") == "submit":
                continue
            handler = getattr(self, "_op_" + str(message.get("op")), None)
            if handler is None:
                outbox.append((identity, {"op": "error", "message": f"unknown op {message.get('op')!r}"}))
                continue
            handler(conn, identity, message, now, outbox, notify, beats)
        pilots.heartbeat(conn, beats, now)
        if sweep:
            self._sweep(conn, now, notify)
        self._assign(conn, now, outbox)

    def _flush(self, outbox, notify) -> None:
        # Results first: a client waits on them, while pilot acknowledgements are housekeeping.
        for client, results in notify.items():
            self._send(client.encode(), {"op": "results", "results": results})
        for identity, message in outbox:
            self._send(identity, message)
        outbox.clear()
        notify.clear()

    def _send(self, identity: bytes, message: dict[str, Any]) -> None:
        try:
            self.router.send_multipart([identity, protocol.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError:
            # Peer gone (or never connected): executors re-sync and pilots re-request on reconnect.
            self.stats["undeliverable"] += 1

    # ---------------------------------------------------------------- ops
    def _op_register(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        msg["pilot"] = identity.decode(errors="replace")
        pilot_id = pilots.register(conn, msg, now)
        self.pilot_of[identity] = (pilot_id, str(msg.get("queue") or ""))
        if msg.get("queue") not in self.broker.queues:
            outbox.append(
                (
                    identity,
                    {
                        "op": "error",
                        "fatal": True,
                        "message": f"unknown queue {msg.get('queue')!r}; known: {sorted(self.broker.queues)}",
                    },
                )
            )
            pilots.depart(conn, pilot_id, now)
            return
        outbox.append(
            (
                identity,
                {
                    "op": "registered",
                    "pilot_id": pilot_id,
                    "epoch": self.epoch,
                    "heartbeat_interval": self.heartbeat_interval,
                },
            )
        )

    def _pilot(self, conn, identity: bytes, outbox) -> tuple[int, str] | None:
        known = self.pilot_of.get(identity)
        if known is None:
            row = pilots.lookup(conn, identity.decode(errors="replace"))
            if row is None:
                outbox.append((identity, {"op": "reregister", "epoch": self.epoch}))
                return None
            known = self.pilot_of[identity] = (row[0], row[1])
        return known

    def _submit_all(self, conn, items, now: float, outbox) -> None:
        """Store every submission of this turn, grouped per client and workflow so that many
        small messages cost one bulk insert; each message gets its own acknowledgement."""
        groups: dict[tuple[str, str, str, bool], list[dict[str, Any]]] = defaultdict(list)
        for identity, msg in items:
            # Executors send from a socket of their own and take replies on their main one.
            client = msg.get("client")
            if not isinstance(client, str):
                client = identity.decode(errors="replace")
            reply: dict[str, Any] = {"op": "submitted", "batch": msg.get("batch")}
            outbox.append((client.encode(), reply))
            jobs = msg.get("jobs")
            if not isinstance(jobs, list) or not jobs:
                reply["error"] = "'jobs' must be a non-empty list"
                continue
            clean, rejected = [], {}
            for i, job in enumerate(jobs):
                try:
                    clean.extend(submission.validate([job], self.broker))
                except submission.SubmissionError as exc:
                    uid = job.get("uid") if isinstance(job, dict) else None
                    rejected[uid or f"jobs[{i}]"] = "; ".join(exc.problems).replace("jobs[0]", f"jobs[{i}]")
            reply["rejected"] = rejected
            reply["accepted"] = len(clean)
            key = (
                client,
                str(msg.get("workflow") or "default"),
                str(msg.get("owner") or ""),
                msg.get("fresh") is True,
            )
            groups[key].extend(clean)
        for (client, workflow, owner, fresh), clean in groups.items():
            if not clean:
                continue
            stored = submission.store(
                conn, clean, self.book, workflow=workflow, client=client, owner=owner, now=now, fresh=fresh
            )
            self._ready(stored.queues)
            self._cache_payloads(stored.payloads)
            self.stats["submitted"] += len(clean)

    def _op_results(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        pilot = self._pilot(conn, identity, outbox)
        if pilot is None:
            return
        outcomes = msg.get("outcomes") or []
        done = completion.record(conn, outcomes, now, self.broker, pilot_id=pilot[0])
        for client, results in done.notify.items():
            notify[client].extend(results)
        self._ready(done.requeued)
        ok = sum(1 for o in outcomes if o.get("ok"))
        done_ok, done_failed = self.pilot_counts.get(pilot[0], (0, 0))
        self.pilot_counts[pilot[0]] = (done_ok + ok, done_failed + len(outcomes) - ok)
        outbox.append((identity, {"op": "acked", "ids": [[o["id"], o.get("attempt")] for o in outcomes]}))
        self.stats["results"] += len(outcomes)
        self._want(identity, pilot, msg.get("want"))

    def _op_started(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        """The pilot started these jobs (``[[id, attempt, started_at], ...]``): they are running."""
        pilot = self._pilot(conn, identity, outbox)
        if pilot is None:
            return
        started, attempts = {}, {}
        for job_id, attempt, t0 in msg.get("jobs") or ():
            started[int(job_id)] = float(t0)
            attempts[int(job_id)] = int(attempt)
        completion.mark_running(conn, pilot[0], started, now, attempts)
        beats.append(pilot[0])

    def _op_returned(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        """The pilot gives back jobs it never started (it is draining, or was asked to)."""
        pilot = self._pilot(conn, identity, outbox)
        if pilot is None:
            return
        wanted = {int(job_id): int(attempt) for job_id, attempt in msg.get("jobs") or ()}
        for job_id in wanted:
            self.reclaiming.pop(job_id, None)
        rows = completion.held_by(conn, pilot[0], list(wanted))
        rows = [r for r in rows if wanted.get(r["id"]) == r["attempt"]]
        done = completion.give_back(conn, rows, now, f"pilot {pilot[0]} gave it back unstarted")
        self._absorb(done, notify)
        self._want(identity, pilot, msg.get("want"))

    def _absorb(self, done: completion.Completed, notify) -> None:
        for client, results in done.notify.items():
            notify[client].extend(results)
        self._ready(done.requeued)

    def _op_request(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        pilot = self._pilot(conn, identity, outbox)
        if pilot is not None:
            self._want(identity, pilot, msg.get("want"))

    def _want(self, identity: bytes, pilot: tuple[int, str], want: Any) -> None:
        if not isinstance(want, dict):
            return
        n = int(want.get("n") or 0)
        if n <= 0:
            self.waiting.pop(identity, None)
            return
        free = min(n, int(want.get("free", n) or 0))
        standing = Standing(pilot[0], pilot[1], n, want.get("cores"), want.get("memory_mb"), free)
        self.waiting[identity] = standing
        if not any(standing.fits_within(c, m) for c, m in self.exhausted.get(pilot[1], ())):
            self.maybe_ready.add(pilot[1])  # a pilot larger than those that found nothing: look again
        if pilot[1] in self.push_queues:
            # A harvester (unseen here) may have reserved jobs for its worker: look this turn,
            # whatever other pilots of the queue found.
            self.push_due.add(identity)

    def _ready(self, queues) -> None:
        """These queues got ready work: every waiting pilot of theirs is worth asking again."""
        for queue in queues:
            if queue:
                self.maybe_ready.add(queue)
                self.exhausted.pop(queue, None)

    def _op_heartbeat(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        pilot = self._pilot(conn, identity, outbox)
        if pilot is None:
            return
        pilot_id = pilot[0]
        beats.append(pilot_id)
        running = {int(k): float(v) for k, v in (msg.get("running") or {}).items()}
        completion.mark_running(conn, pilot_id, running, now)
        progress = msg.get("progress")
        if isinstance(progress, dict) and progress:
            completion.record_progress(conn, pilot_id, progress)
        known = {int(j) for j in msg.get("known") or ()}
        grace = max(2 * self.heartbeat_interval, 5.0)
        done = watchdog.unacknowledged(conn, pilot_id, known, now - grace, now)
        for client, results in done.notify.items():
            notify[client].extend(results)
        self._ready(done.requeued)
        kill = []
        if known:
            rows = conn.execute(
                select(s.jobs.c.id, s.jobs.c.status, s.jobs.c.pilot_id).where(s.jobs.c.id.in_(known))
            ).all()
            kill = [r.id for r in rows if r.status not in ACTIVE_STATES or r.pilot_id != pilot_id]
        outbox.append((identity, {"op": "hb", "epoch": self.epoch, "kill": kill}))
        self._want(identity, pilot, msg.get("want"))

    def _op_bye(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        pilot = self.pilot_of.pop(identity, None) or self._pilot(conn, identity, [])
        self.waiting.pop(identity, None)
        if pilot is not None:
            pilots.depart(conn, pilot[0], now)
            # Whatever it still held (a report lost on the way): back to the queue if never
            # started, else the attempt ended with the pilot.
            self._absorb(watchdog.settle_departed(conn, pilot[0], now), notify)

    def _op_sync(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        uids = [str(u) for u in msg.get("uids") or ()]
        results, unknown = completion.result_of(conn, uids) if uids else ([], [])
        if results:
            notify[identity.decode(errors="replace")].extend(results)
        outbox.append((identity, {"op": "synced", "unknown": unknown, "epoch": self.epoch}))

    def _op_ping(self, conn, identity, msg, now, outbox, notify, beats) -> None:
        outbox.append((identity, {"op": "pong", "epoch": self.epoch}))

    # ---------------------------------------------------------------- internals
    def _control(self, control: dict[str, Any], outbox, notify) -> None:
        kind = control.get("kind")
        if kind == "ready":
            self._ready(set(control.get("queues") or self.broker.queues))
        elif kind == "kill":
            for name, ids in (control.get("pilots") or {}).items():
                outbox.append((name.encode(), {"op": "kill", "ids": ids}))
        elif kind == "notify":
            for client, results in (control.get("notify") or {}).items():
                notify[client].extend(results)

    def _cache_payloads(self, payloads: dict[int, bytes]) -> None:
        """Keep recent function buffers in memory so dispatch need not read them back."""
        size = sum(len(b) for b in payloads.values())
        if self.payload_bytes + size > _PAYLOAD_CACHE_BYTES:
            self.payloads.clear()
            self.payload_bytes = 0
        self.payloads.update(payloads)
        self.payload_bytes += size

    def _sweep(self, conn, now: float, notify) -> None:
        self._next_sweep = now + min(self.heartbeat_interval, 5.0)
        pilots.count_done(conn, self.pilot_counts)
        self.pilot_counts = {}
        # Periodically look again at every queue: a request filtered by size may have left work.
        self._ready(self.broker.queues)
        self.reclaiming = {j: t for j, t in self.reclaiming.items() if t > now - _RECLAIM_PATIENCE}
        lost, done = watchdog.sweep(conn, now, self.heartbeat_timeout)
        if lost:
            log.warning(
                "pilots %s lost (no heartbeat for %.0f s); their jobs are retried",
                lost,
                self.heartbeat_timeout,
            )
            for identity, (pilot_id, _q) in list(self.pilot_of.items()):
                if pilot_id in lost:
                    self.pilot_of.pop(identity, None)
                    self.waiting.pop(identity, None)
        for client, results in done.notify.items():
            notify[client].extend(results)
        self._ready(done.requeued)

    def _assign(self, conn, now: float, outbox) -> None:
        """Serve standing requests: first the free slots of every waiting pilot, then, with what
        is left, their prefetch; a pilot no larger than one that found nothing is skipped. Then
        ask back prefetched jobs for pilots that still have free slots."""
        self._serve_reserved(conn, now, outbox)
        if not self.waiting or not self.maybe_ready:
            return
        for prefetch in (False, True):
            for identity, want in list(self.waiting.items()):
                if want.queue not in self.maybe_ready:
                    continue
                n = want.n - want.free if prefetch else want.free
                if n <= 0 or any(want.fits_within(c, m) for c, m in self.exhausted.get(want.queue, ())):
                    continue
                jobs = assignment.assign(
                    conn,
                    pilot_id=want.pilot_id,
                    queue=want.queue,
                    n=n,
                    cores=want.cores,
                    memory_mb=want.memory_mb,
                    now=now,
                    payload_cache=self.payloads,
                )
                if len(jobs) < n:
                    self.exhausted[want.queue].append((want.cores, want.memory_mb))
                self._hand(identity, want, jobs, outbox)
        for queue in list(self.maybe_ready):
            if all(
                any(w.fits_within(c, m) for c, m in self.exhausted.get(queue, ()))
                for w in self.waiting.values()
                if w.queue == queue
            ):
                self.maybe_ready.discard(queue)  # nothing there for anyone waiting: until new work
        self._reclaim(conn, now, outbox)

    def _reclaim(self, conn, now: float, outbox) -> None:
        """A pilot with free slots that found nothing ready: ask other pilots of its queue for
        jobs they hold in prefetch (dispatched, not started), newest first. They give back what
        they have not started (``returned``), and it goes to a free pilot."""
        idle = [(identity, w) for identity, w in self.waiting.items() if w.free > 0]
        if not idle:
            return
        names = {pilot_id: identity for identity, (pilot_id, _q) in self.pilot_of.items()}
        for _identity, want in idle:
            rows = assignment.prefetched(
                conn, queue=want.queue, other_than=want.pilot_id, n=want.free + len(self.reclaiming),
                cores=want.cores, memory_mb=want.memory_mb, before=now - _RECLAIM_AFTER,
            )  # fmt: skip
            asks: dict[bytes, list[list[int]]] = defaultdict(list)
            for row in rows:
                holder = names.get(row["pilot_id"])
                if holder is None or row["id"] in self.reclaiming:
                    continue
                if sum(len(v) for v in asks.values()) >= want.free:
                    break
                asks[holder].append([row["id"], row["attempt"]])
                self.reclaiming[row["id"]] = now
            for holder, jobs in asks.items():
                outbox.append((holder, {"op": "reclaim", "jobs": jobs}))
                self.stats["reclaimed"] += len(jobs)

    def _serve_reserved(self, conn, now: float, outbox) -> None:
        """Push queues: a pilot that asked this turn gets the jobs reserved for its worker first,
        whatever other pilots of the queue found; the usual pass then fills the rest of its slots."""
        for identity in self.push_due:
            want = self.waiting.get(identity)
            if want is None:
                continue
            jobs = push.take(conn, pilot_id=want.pilot_id, n=want.n, now=now, payload_cache=self.payloads)
            self._hand(identity, want, jobs, outbox)
        self.push_due.clear()

    def _hand(self, identity: bytes, want: Standing, jobs: list[dict[str, Any]], outbox) -> None:
        """Send dispatched jobs to the pilot; its request stands for what is still wanted."""
        if jobs:
            outbox.append((identity, {"op": "jobs", "jobs": jobs}))
            self.stats["dispatched"] += len(jobs)
            want.n -= len(jobs)
            want.free = max(0, want.free - len(jobs))
        if want.n <= 0:
            del self.waiting[identity]
