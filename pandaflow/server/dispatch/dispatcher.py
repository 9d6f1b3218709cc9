"""The ZeroMQ dispatcher: the hot path between executors, pilots and the database.

One thread owns a ROUTER socket. Each turn of its loop drains every message waiting, decodes
and validates each (:mod:`pandaflow.protocol`: a frame that is not a valid message gets an
:class:`~pandaflow.protocol.Error` reply and a log line, and is applied nowhere), applies the
valid ones in one database transaction (submissions first, then starts, returns, reports,
heartbeats and requests), commits, and only then replies: an acknowledged submission or report
is durable. Which waiting pilot gets which ready jobs is :mod:`pandaflow.server.dispatch.allocation`.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
from sqlalchemy import Connection, Engine, select, update

from pandaflow import protocol
from pandaflow.server.dispatch import completion, watchdog
from pandaflow.server.dispatch.allocation import Allocator
from pandaflow.server.dispatch.clients import Clients
from pandaflow.server.jobs import control, pilots, states, submission
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.store import schema as s
from pandaflow.server.store.statements import chunks, claim_writes

log = logging.getLogger(__name__)

_ORDER = {
    protocol.Register: 0,
    protocol.Submit: 1,
    protocol.Started: 2,
    protocol.Returned: 3,
    protocol.Report: 4,
    protocol.Heartbeat: 5,
    protocol.Sync: 6,
    protocol.Ping: 7,
    protocol.Request: 8,
    protocol.Bye: 9,
}
_MAX_DRAIN = 4000
_PAYLOAD_CACHE_BYTES = 256 << 20
_LOG_EVERY = 10.0  # seconds between two log lines about invalid messages


@dataclass(slots=True)
class Turn:
    """What one turn gathers while it applies its messages: replies, client results, beats."""

    conn: Connection
    now: float
    outbox: list[tuple[bytes, Any]] = field(default_factory=list)
    notify: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    beats: list[int] = field(default_factory=list)

    def absorb(self, done: completion.Completed, dispatcher: Dispatcher) -> None:
        for client, results in done.notify.items():
            self.notify[client].extend(results)
        dispatcher.allocator.ready(done.requeued)


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
        self.pilot_of: dict[bytes, tuple[int, str]] = {}
        self.allocator = Allocator(
            broker.queues, [q.name for q in broker.queues.values() if q.mode == "push"]
        )
        self.book = submission.WorkflowBook()
        self.clients = Clients()
        self._next_sweep = time.time() + self.heartbeat_interval
        self.stats: dict[str, int] = defaultdict(int)
        self.payloads: dict[int, bytes] = {}
        self.payload_bytes = 0
        self._conn: Connection | None = None
        self.pilot_counts: dict[int, tuple[int, int]] = {}
        self._logged_at = 0.0
        self._handlers = {
            protocol.Register: self._on_register,
            protocol.Started: self._on_started,
            protocol.Returned: self._on_returned,
            protocol.Report: self._on_report,
            protocol.Heartbeat: self._on_heartbeat,
            protocol.Request: self._on_request,
            protocol.Bye: self._on_bye,
            protocol.Sync: self._on_sync,
            protocol.Ping: self._on_ping,
        }

    # ---------------------------------------------------------------- thread control
    def start(self) -> None:
        with self.engine.begin() as conn:
            self.clients.startup(conn, time.time())
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
        sock.send(protocol.pack(message))

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
            batch: list[tuple[bytes, protocol.ToServer]] = []
            controls: list[dict[str, Any]] = []
            if self.router in events:
                self._drain_router(batch)
            if self.control in events:
                while True:
                    try:
                        controls.append(protocol.unpack(self.control.recv(zmq.NOBLOCK)))
                    except zmq.Again:
                        break
            if self._stop.is_set():
                break
            sweep = time.time() >= self._next_sweep
            if batch or controls or sweep:
                self.turn(batch, controls, sweep)

    def _drain_router(self, batch: list[tuple[bytes, protocol.ToServer]]) -> None:
        for _ in range(_MAX_DRAIN):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._refuse(frames[0], f"expected one frame per message, got {len(frames) - 1}")
                continue
            identity, frame = frames
            try:
                message = protocol.to_server(frame)
            except protocol.ProtocolError as exc:
                if self._authentic(identity, protocol.credential_of(frame)):
                    self._refuse(identity, str(exc))
                continue
            if self._authentic(identity, message.tok):
                batch.append((identity, message))

    def _authentic(self, identity: bytes, token: str) -> bool:
        if hmac.compare_digest(token.encode(), self.token):
            return True
        self.stats["auth_failures"] += 1
        self._send(identity, protocol.Error(message="authentication failed: wrong or missing token"))
        return False

    def _refuse(self, identity: bytes, why: str) -> None:
        """Answer a frame that is not a valid message, and say so in the log (rate-limited)."""
        self.stats["invalid_messages"] += 1
        self._send(identity, protocol.Error(message=why))
        now = time.time()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning(
                "refused a message from %r: %s (%d refused so far)",
                identity[:64], why, self.stats["invalid_messages"],
            )  # fmt: skip

    def turn(
        self, batch: list[tuple[bytes, protocol.ToServer]], controls: list[dict[str, Any]], sweep: bool
    ) -> None:
        """Apply one batch of messages in one transaction, then reply."""
        early: list[tuple[bytes, Any]] = []
        notify: dict[str, list[Any]] = defaultdict(list)
        for hint in controls:
            self._control(hint, early, notify)
        self._flush(early, notify)
        batch.sort(key=lambda item: _ORDER.get(type(item[1]), 99))
        try:
            done = self._apply(batch, sweep)
        except Exception as exc:
            # Nothing was committed: submitters and pilots got no ack and will resend.
            log.exception("dispatcher turn failed; rolled back %d messages", len(batch))
            self.book.forget()
            self.stats["rollbacks"] += 1
            if len(batch) > 1:
                for item in batch:  # isolate the message that fails, so the others go through
                    self.turn([item], [], False)
            elif batch and isinstance(batch[0][1], protocol.Report) and len(batch[0][1].outcomes) > 1:
                # and the outcome that fails: the others are acknowledged, the pilot resends that one
                identity, report = batch[0]
                bare = msgspec.structs.replace(report, outcomes=[], started=[], want=None)
                alone = [msgspec.structs.replace(bare, outcomes=[o]) for o in report.outcomes]
                for part in [msgspec.structs.replace(report, outcomes=[]), *alone]:
                    self.turn([(identity, part)], [], False)
            elif batch:
                identity, message = batch[0]
                error = f"server failed to process {type(message).__name__}: {type(exc).__name__}: {exc}"
                if isinstance(message, protocol.Submit):
                    # executors read replies on their main socket
                    client = (message.client or identity.decode(errors="replace")).encode()
                    self._send(client, protocol.Submitted(batch=message.batch, error=error))
                else:
                    self._send(identity, protocol.Error(message=error))
            return
        self._flush(done.outbox, done.notify)

    def _apply(self, batch: list[tuple[bytes, protocol.ToServer]], sweep: bool) -> Turn:
        if self._conn is None or self._conn.closed:
            # One connection for the loop's life: no pool checkout and reset on every turn.
            self._conn = self.engine.connect()
        turn = Turn(self._conn, time.time())
        try:
            with self._conn.begin():
                self._apply_in(turn, batch, sweep)
        except Exception:
            self._conn.close()
            self._conn = None
            raise
        return turn

    def _apply_in(self, turn: Turn, batch: list[tuple[bytes, protocol.ToServer]], sweep: bool) -> None:
        claim_writes(turn.conn)  # a turn reads jobs and products, then writes what follows from them
        submits = [(i, m) for i, m in batch if isinstance(m, protocol.Submit)]
        if submits:
            self._submit_all(turn, submits)
        for identity, message in batch:
            handler = self._handlers.get(type(message))
            if handler is not None:
                handler(turn, identity, message)
        pilots.heartbeat(turn.conn, turn.beats, turn.now)
        if sweep:
            self._sweep(turn)
        holders = {pilot_id: identity for identity, (pilot_id, _q) in self.pilot_of.items()}
        self.allocator.serve(turn.conn, turn.now, turn.outbox, self.payloads, holders)

    def _flush(self, outbox: list[tuple[bytes, Any]], notify: dict[str, list[Any]]) -> None:
        # Results first: a client waits on them, while pilot acknowledgements are housekeeping.
        for client, results in notify.items():
            self._send(client.encode(), protocol.Results(results=results))
        for identity, message in outbox:
            self._send(identity, message)
        outbox.clear()
        notify.clear()

    def _send(self, identity: bytes, message: msgspec.Struct) -> None:
        try:
            self.router.send_multipart([identity, protocol.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError:
            # Peer gone (or never connected): executors re-sync and pilots re-request on reconnect.
            self.stats["undeliverable"] += 1

    # ---------------------------------------------------------------- pilots
    def _pilot(self, turn: Turn, identity: bytes) -> tuple[int, str] | None:
        """The pilot (id, queue) behind ``identity``; one the server does not know is told to
        register again (a server restarted on a fresh database, or a pilot it gave up on)."""
        known = self.pilot_of.get(identity)
        if known is None:
            row = pilots.lookup(turn.conn, identity.decode(errors="replace"))
            if row is None:
                turn.outbox.append((identity, protocol.Reregister(epoch=self.epoch)))
                return None
            known = self.pilot_of[identity] = (row[0], row[1])
        return known

    def _want(self, identity: bytes, pilot: tuple[int, str], want: protocol.Want | None) -> None:
        self.allocator.want(identity, pilot[0], pilot[1], want)

    def _on_register(self, turn: Turn, identity: bytes, msg: protocol.Register) -> None:
        info = msgspec.structs.asdict(msg)
        info["pilot"] = identity.decode(errors="replace")
        pilot_id = pilots.register(turn.conn, info, turn.now)
        self.pilot_of[identity] = (pilot_id, msg.queue)
        if msg.queue not in self.broker.queues:
            known = sorted(self.broker.queues)
            turn.outbox.append(
                (identity, protocol.Error(message=f"unknown queue {msg.queue!r}; known: {known}", fatal=True))
            )
            pilots.depart(turn.conn, pilot_id, turn.now)
            return
        reply = protocol.Registered(
            pilot_id=pilot_id, epoch=self.epoch, heartbeat_interval=self.heartbeat_interval
        )
        turn.outbox.append((identity, reply))

    def _on_started(self, turn: Turn, identity: bytes, msg: protocol.Started) -> None:
        """The pilot started these jobs: they are running (and count an attempt if it dies)."""
        pilot = self._pilot(turn, identity)
        if pilot is None:
            return
        self._mark_started(turn, pilot[0], msg.jobs)
        turn.beats.append(pilot[0])

    def _mark_started(self, turn: Turn, pilot_id: int, jobs: list[tuple[int, int, float]]) -> None:
        started = {job_id: t0 for job_id, _attempt, t0 in jobs}
        attempts = {job_id: attempt for job_id, attempt, _t0 in jobs}
        completion.mark_running(turn.conn, pilot_id, started, turn.now, attempts)

    def _on_returned(self, turn: Turn, identity: bytes, msg: protocol.Returned) -> None:
        """The pilot gives back jobs it never started (it is draining, or was asked to)."""
        pilot = self._pilot(turn, identity)
        if pilot is None:
            return
        wanted = dict(msg.jobs)
        self.allocator.returned(wanted)
        rows = [
            r
            for r in completion.held_by(turn.conn, pilot[0], list(wanted))
            if wanted[r["id"]] == r["attempt"]
        ]
        turn.absorb(
            completion.give_back(turn.conn, rows, turn.now, f"pilot {pilot[0]} gave it back unstarted"), self
        )
        self._want(identity, pilot, msg.want)

    def _on_report(self, turn: Turn, identity: bytes, msg: protocol.Report) -> None:
        pilot = self._pilot(turn, identity)
        if pilot is None:
            return
        if msg.started:
            self._mark_started(turn, pilot[0], msg.started)
        outcomes = msg.outcomes
        turn.absorb(completion.record(turn.conn, outcomes, turn.now, self.broker, pilot_id=pilot[0]), self)
        ok = sum(1 for o in outcomes if o.ok)
        done_ok, done_failed = self.pilot_counts.get(pilot[0], (0, 0))
        self.pilot_counts[pilot[0]] = (done_ok + ok, done_failed + len(outcomes) - ok)
        turn.outbox.append((identity, protocol.Acked(ids=[(o.job_id, o.attempt) for o in outcomes])))
        self.stats["results"] += len(outcomes)
        self._want(identity, pilot, msg.want)

    def _on_request(self, turn: Turn, identity: bytes, msg: protocol.Request) -> None:
        pilot = self._pilot(turn, identity)
        if pilot is not None:
            self._want(identity, pilot, msg.want)

    def _on_heartbeat(self, turn: Turn, identity: bytes, msg: protocol.Heartbeat) -> None:
        pilot = self._pilot(turn, identity)
        if pilot is None:
            return
        pilot_id = pilot[0]
        turn.beats.append(pilot_id)
        completion.mark_running(turn.conn, pilot_id, msg.running, turn.now)
        if msg.progress:
            completion.record_progress(turn.conn, pilot_id, msg.progress)
        known = set(msg.known)
        grace = max(2 * self.heartbeat_interval, 5.0)
        turn.absorb(watchdog.unacknowledged(turn.conn, pilot_id, known, turn.now - grace, turn.now), self)
        kill = completion.not_held_by(turn.conn, pilot_id, known)
        turn.outbox.append((identity, protocol.Beat(epoch=self.epoch, kill=kill)))
        self._want(identity, pilot, msg.want)

    def _on_bye(self, turn: Turn, identity: bytes, msg: protocol.Bye) -> None:
        pilot = self.pilot_of.pop(identity, None) or self._pilot(turn, identity)
        self.allocator.forget(identity)
        if pilot is not None:
            pilots.depart(turn.conn, pilot[0], turn.now)
            # Whatever it still held (a report lost on the way): back to the queue if never
            # started, else the attempt ended with the pilot.
            turn.absorb(watchdog.settle_departed(turn.conn, pilot[0], turn.now), self)

    # ---------------------------------------------------------------- executors
    def _submit_all(self, turn: Turn, items: list[tuple[bytes, protocol.Submit]]) -> None:
        """Store every submission of this turn, grouped per client and workflow so that many
        small messages cost one bulk insert; each message gets its own acknowledgement."""
        groups: dict[tuple[str, str, str, bool, bool], list[dict[str, Any]]] = defaultdict(list)
        for identity, msg in items:
            # Executors send from a socket of their own and take replies on their main one.
            msg.client = msg.client or identity.decode(errors="replace")
            reply = protocol.Submitted(batch=msg.batch)
            turn.outbox.append((msg.client.encode(), reply))
            if not msg.jobs:
                reply.error = "'jobs' must be a non-empty list"
                continue
            clean, rejected = [], {}
            for i, job in enumerate(msg.jobs):
                try:
                    clean.extend(submission.validate([job], self.broker))
                except submission.SubmissionError as exc:
                    uid = job.get("uid") if isinstance(job.get("uid"), str) else None
                    rejected[uid or f"jobs[{i}]"] = "; ".join(exc.problems).replace("jobs[0]", f"jobs[{i}]")
            reply.rejected = rejected
            reply.accepted = len(clean)
            groups[(msg.client, msg.workflow or "default", msg.owner, msg.fresh, msg.attach)].extend(clean)
        for (client, workflow, owner, fresh, attach), clean in groups.items():
            if not clean:
                continue
            stored = submission.store(
                turn.conn, clean, self.book, workflow=workflow, client=client, owner=owner, now=turn.now,
                fresh=fresh,
            )  # fmt: skip
            self.allocator.ready(stored.queues)
            self._cache_payloads(stored.payloads)
            self.stats["submitted"] += len(clean)
            if attach and stored.duplicates:
                self._reattach(turn, client, [stored.ids[uid] for uid in stored.duplicates])

    def _reattach(self, turn: Turn, client: str, job_ids: list[int]) -> None:
        """A named run re-sent jobs it had sent before (a rerun of its driver): the finished ones
        are answered at once, the failed or cancelled ones run again, the others are awaited."""
        rows = []
        for part in chunks(job_ids):
            rows.extend(
                turn.conn.execute(
                    select(s.jobs.c.id, s.jobs.c.uid, s.jobs.c.status, s.jobs.c.client).where(
                        s.jobs.c.id.in_(list(part))
                    )
                ).all()
            )
        moved = [r.id for r in rows if r.client != client]
        for part in chunks(moved):  # a run re-attached under another client id: its results follow it
            turn.conn.execute(update(s.jobs).where(s.jobs.c.id.in_(list(part))).values(client=client))
        done = [r.uid for r in rows if r.status == states.FINISHED]
        if done:
            results, _unknown = completion.result_of(turn.conn, done)
            turn.notify[client].extend(results)
        again = [r.id for r in rows if r.status in (states.FAILED, states.CANCELLED)]
        if again:
            changed = control.retry(turn.conn, turn.now, job_ids=again)
            self.allocator.ready({q for q in changed.queues if q} or set(self.broker.queues))
        self.stats["reattached"] += len(rows)
        log.info(
            "client %s re-attached %d job(s): %d finished, %d run again, %d awaited",
            client[:16], len(rows), len(done), len(again), len(rows) - len(done) - len(again),
        )  # fmt: skip

    def _on_sync(self, turn: Turn, identity: bytes, msg: protocol.Sync) -> None:
        results, unknown = completion.result_of(turn.conn, msg.uids) if msg.uids else ([], [])
        if results:
            turn.notify[identity.decode(errors="replace")].extend(results)
        turn.outbox.append((identity, protocol.Synced(unknown=unknown, epoch=self.epoch)))

    def _on_ping(self, turn: Turn, identity: bytes, msg: protocol.Ping) -> None:
        self.clients.ping(msg.client or identity.decode(errors="replace"), turn.now, msg.grace, msg.run)
        turn.outbox.append((identity, protocol.Pong(epoch=self.epoch)))

    # ---------------------------------------------------------------- internals
    def _control(self, control: dict[str, Any], outbox, notify) -> None:
        kind = control.get("kind")
        if kind == "ready":
            self.allocator.ready(set(control.get("queues") or self.broker.queues))
        elif kind == "kill":
            for name, ids in (control.get("pilots") or {}).items():
                outbox.append((name.encode(), protocol.Kill(ids=ids)))
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

    def _sweep(self, turn: Turn) -> None:
        self._next_sweep = turn.now + min(self.heartbeat_interval, 5.0)
        pilots.count_done(turn.conn, self.pilot_counts)
        self.pilot_counts = {}
        # Periodically look again at every queue: a request filtered by size may have left work.
        self.allocator.rescan(turn.now)
        orphaned = self.clients.sweep(turn.conn, turn.now)
        if orphaned is not None:
            self._follow(turn, orphaned.effects)
        lost, done = watchdog.sweep(turn.conn, turn.now, self.heartbeat_timeout)
        if lost:
            log.warning(
                "pilots %s lost (no heartbeat for %.0f s): their running jobs are retried, the others "
                "go back to their queue",
                lost, self.heartbeat_timeout,
            )  # fmt: skip
            for identity, (pilot_id, _q) in list(self.pilot_of.items()):
                if pilot_id in lost:
                    self.pilot_of.pop(identity, None)
                    self.allocator.forget(identity)
        turn.absorb(done, self)

    def _follow(self, turn: Turn, effects: states.Effects) -> None:
        """Send what a change made here needs: results to clients, kills to pilots, wake-ups."""
        for client, results in effects.notify.items():
            turn.notify[client].extend(results)
        holders = {pilot_id: identity for identity, (pilot_id, _q) in self.pilot_of.items()}
        for pilot_id, ids in effects.kill.items():
            if pilot_id in holders:
                turn.outbox.append((holders[pilot_id], protocol.Kill(ids=ids)))
        self.allocator.ready({q for q in effects.queues if q})

    @property
    def waiting(self):
        """The standing requests (for tests and the monitor)."""
        return self.allocator.waiting
