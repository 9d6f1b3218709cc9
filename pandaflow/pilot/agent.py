"""The pilot agent: registers with the server, pulls jobs to fill its slots, runs them through
a :class:`~pandaflow.pilot.runner.PayloadRunner`, reports outcomes until acknowledged, and
heartbeats. SIGTERM makes it take no new work, report what it holds, and exit."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil
import zmq

from pandaflow import __version__, protocol
from pandaflow.errorcodes import ErrorCode
from pandaflow.pilot.envcheck import check_environment
from pandaflow.pilot.runner import Outcome, Payload, PayloadRunner

log = logging.getLogger(__name__)

_RESEND_AFTER = 5.0  # seconds an unacknowledged result waits before it is sent again
PREFETCH_SECONDS = 1.0  # adaptive prefetch: work held per slot beyond the running jobs, in seconds
PREFETCH_MAX_PER_SLOT = 16  # ... but never more jobs than this per slot (other pilots want some)
_RESULTS_PER_MESSAGE = 500


class PilotError(RuntimeError):
    """The pilot cannot start or was refused by the server."""


@dataclass
class PilotConfig:
    """Settings of one pilot (``pandaflow pilot --help`` documents each)."""

    zmq_endpoint: str
    token: str
    queue: str = "local"
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int | None = None
    workdir: str = "."
    name: str | None = None  # default: host-pid; the identity adds a random suffix (see identity)
    idle_timeout: float = 0.0  # exit after this long with nothing to do (0: never)
    server_timeout: float = 600.0  # give up after this long without a word from the server (0: never)
    exit_with: int | None = None  # exit when this process (the one that started us) is gone
    heartbeat_interval: float = 5.0  # replaced by the server's value at registration
    prefetch: int | None = None  # jobs held beyond free slots (None: adaptive, see Pilot.prefetch)
    report_linger: float = 0.005  # seconds a result may wait to share a message with the next ones
    # Seconds a start waits to be reported: a job that ends sooner is reported by its outcome
    # alone (half the server's work for short jobs); one that runs longer, and every job of a
    # pilot that dies, is known to have started within this long.
    start_linger: float = 0.05
    sample_interval: float = 1.0
    min_free_disk_mb: int = 100
    worker_id: int | None = None  # the harvester's worker this pilot runs in (sent at registration)
    identity: str = field(init=False, default="")  # name plus a random suffix: unique per process

    def __post_init__(self) -> None:
        # Every pilot process has an identity of its own, whatever its name: two pilots started
        # with the same --name must never be taken for one (both would be handed its jobs).
        base = self.name or f"{socket.gethostname()}-{os.getpid()}"
        self.identity = f"{base}-{uuid.uuid4().hex[:8]}"
        if self.cores < 1:
            raise PilotError(f"--cores must be at least 1, got {self.cores}")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise PilotError(f"--memory must be positive, got {self.memory_mb}")
        if self.prefetch is not None and self.prefetch < 0:
            raise PilotError(f"--prefetch must not be negative, got {self.prefetch}")
        if self.report_linger < 0:
            raise PilotError(f"report_linger must not be negative, got {self.report_linger}")


class Pilot:
    """One pilot process's agent loop."""

    def __init__(self, cfg: PilotConfig):
        self.cfg = cfg
        self.runner = PayloadRunner(cfg.cores, cfg.workdir, sample_interval=cfg.sample_interval)
        self.queued: deque[Payload] = deque()
        self.unacked: dict[tuple[int, int], tuple[float, Outcome]] = {}  # sent, not yet acknowledged
        self.epoch: str | None = None
        self.registered = False
        self.draining = False
        self.stopping = False
        self.last_activity = self.last_heard = time.time()
        self.done = 0
        self.mean_runtime: float | None = None  # moving average of job run times (adaptive prefetch)
        self.results: list[Outcome] = []  # outcomes not yet sent (see _flush_results)
        self.results_since = 0.0
        # Jobs started and not yet reported as such: the server must know promptly which jobs
        # this pilot started, so that if it dies the others go back without costing an attempt.
        self.starts: dict[int, tuple[int, float]] = {}  # job id -> (attempt, started at)
        self.starts_since = 0.0
        self._ctx = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, cfg.identity.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)

    # ---------------------------------------------------------------- messaging
    def send(self, message: protocol.ToServer) -> None:
        message.tok = self.cfg.token
        self.sock.send(protocol.encode(message))

    def prefetch(self) -> int:
        """Jobs to hold beyond the free slots. Fixed with ``--prefetch``; otherwise about
        PREFETCH_SECONDS of work per slot at the run times seen so far (one job per slot until
        a job ended, at most PREFETCH_MAX_PER_SLOT): a pilot of short jobs takes many per
        request and never idles waiting for the next message, one of long jobs takes few."""
        if self.cfg.prefetch is not None:
            return self.cfg.prefetch
        if self.mean_runtime is None:
            return self.cfg.cores
        per_slot = min(PREFETCH_MAX_PER_SLOT, max(1.0, PREFETCH_SECONDS / max(self.mean_runtime, 1e-4)))
        return int(per_slot * self.cfg.cores)

    def want(self) -> protocol.Want:
        """What the pilot asks for: ``n`` jobs in all, of which ``free`` would start at once (free
        slots no queued job will take); the rest are prefetch, which the server hands out only
        while no other pilot of the queue has a free slot, and may ask back (``reclaim``)."""
        if self.draining:
            return protocol.Want(n=0, free=0)
        held = len(self.queued) + self.runner.held()
        free = max(0, self.runner.free_slots() - sum(p.cores for p in self.queued))
        n = max(0, self.cfg.cores + self.prefetch() - held)
        return protocol.Want(n=n, free=min(free, n), cores=self.cfg.cores, memory_mb=self.cfg.memory_mb)

    def register(self) -> None:
        self.send(
            protocol.Register(
                queue=self.cfg.queue,
                host=socket.gethostname(),
                pid=os.getpid(),
                cores=self.cfg.cores,
                memory_mb=self.cfg.memory_mb,
                workdir=os.path.abspath(self.cfg.workdir),
                version=__version__,
                worker_id=self.cfg.worker_id,
            )
        )

    def heartbeat(self) -> None:
        running = self.runner.running()
        known = [p.job_id for p in self.queued] + list(running) + [k[0] for k in self.unacked]
        known += [o.job_id for o in self.results]  # ended, their outcome not sent yet
        self.send(
            protocol.Heartbeat(
                known=known,
                running={j: info["started_at"] for j, info in running.items()},
                # Live view of running jobs for the monitor: output tail and memory so far.
                progress={
                    j: (info.get("tail") or "", round(info.get("max_rss_mb") or info.get("rss_mb") or 0.0, 1))
                    for j, info in running.items()
                },
                want=self.want(),
            )
        )

    # ---------------------------------------------------------------- loop
    def run(self) -> int:
        """Run until idle timeout, SIGTERM or a fatal server refusal; returns the exit code."""
        # Payloads must not inherit the pilot's credential.
        os.environ.pop("PANDAFLOW_TOKEN", None)
        # The environment check and the warm workers both import the payload modules (about a
        # second each); run them side by side, and register only once both are through.
        checked: list[str] = []
        checker = threading.Thread(
            target=lambda: checked.extend(check_environment(self.cfg.workdir, self.cfg.min_free_disk_mb)),
            name="pandaflow-envcheck",
        )
        checker.start()
        try:
            self.runner.start()
        finally:
            checker.join()
        if checked:
            log.error(
                "environment check failed (error %d): %s", ErrorCode.ENV_CHECK_FAILED, "; ".join(checked)
            )
            self.runner.stop()
            return int(ErrorCode.ENV_CHECK_FAILED) % 256 or 1
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        self.sock.connect(self.cfg.zmq_endpoint)
        self.register()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        # A signal writes a byte here, so SIGTERM wakes the loop at once instead of at the next beat.
        signal_r, signal_w = socket.socketpair()
        signal_r.setblocking(False)
        signal_w.setblocking(False)
        signal.set_wakeup_fd(signal_w.fileno(), warn_on_full_buffer=False)
        poller.register(signal_r.fileno(), zmq.POLLIN)
        wake = self.runner.fileno_for_wakeup()
        if wake is not None:
            poller.register(wake, zmq.POLLIN)
        self.next_beat = time.time() + self.cfg.heartbeat_interval
        next_register = time.time() + 2.0
        code = 0
        try:
            while True:
                wake_at = self.next_beat if self.registered else min(self.next_beat, next_register)
                if self.results:
                    wake_at = min(wake_at, self.results_since + self.cfg.report_linger)
                if self.starts:
                    wake_at = min(wake_at, self.starts_since + self.cfg.start_linger)
                timeout = max(0.0, wake_at - time.time())
                events = dict(poller.poll(int(timeout * 1000) + 1))
                if self.sock in events:
                    code = self._receive()
                    if code:
                        break
                self._start_queued()
                self._report(self.runner.wait(0))
                self._flush_results()
                now = time.time()
                if not self.registered and now >= next_register:
                    self.register()
                    next_register = now + 2.0
                if now >= self.next_beat:
                    if self.registered:
                        self.heartbeat()
                        self._resend(now)
                    self.next_beat = now + self.cfg.heartbeat_interval
                    if self._abandoned(now):
                        self.stopping = self.draining = True
                if self.stopping:
                    self._drain()
                    break
                if self._idle_expired(now):
                    log.info("idle for %.0f s: exiting", self.cfg.idle_timeout)
                    break
        finally:
            signal.set_wakeup_fd(-1)
            signal_r.close()
            signal_w.close()
            self._shutdown()
        return code

    def _receive(self) -> int:
        """Handle every message waiting; returns an exit code when the server refuses us for good."""
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return 0
            try:
                message = protocol.to_pilot(frame)
            except protocol.ProtocolError as exc:
                log.error("ignored a message from the server: %s", exc)
                continue
            self.last_heard = time.time()
            code = self._handle(message)
            if code:
                return code

    def _handle(self, message: protocol.ToPilot) -> int:
        match message:
            case protocol.Jobs(jobs=jobs):
                self.queued.extend(jobs)
                self.last_activity = time.time()
            case protocol.Acked(ids=ids):
                for job_id, attempt in ids:
                    self.unacked.pop((job_id, attempt), None)
            case protocol.Kill(ids=ids):
                for job_id in ids:
                    self._kill(job_id)
            case protocol.Reclaim(jobs=jobs):
                self._give_back(jobs)
            case protocol.Beat(epoch=epoch, kill=kill):
                for job_id in kill:
                    self._kill(job_id)
                if epoch != self.epoch:
                    # The server restarted: re-send what it may not have and ask for work again.
                    self.epoch = epoch
                    self._resend(float("inf"))
                    self.send(protocol.Request(want=self.want()))
            case protocol.Registered(pilot_id=pilot_id, epoch=epoch, heartbeat_interval=interval):
                self.registered = True
                self.epoch = epoch
                # The server's interval rules from now on (its watchdog counts on it).
                self.cfg.heartbeat_interval = float(interval or self.cfg.heartbeat_interval)
                self.next_beat = min(self.next_beat, time.time() + self.cfg.heartbeat_interval)
                log.info("registered as pilot %s (%s) on queue %s", pilot_id, self.cfg.identity,
                         self.cfg.queue)  # fmt: skip
                self._resend(float("inf"))
                self.send(protocol.Request(want=self.want()))
            case protocol.Reregister():
                self.registered = False
                self.register()
            case protocol.Error(message=text, fatal=fatal):
                log.error("server: %s", text)
                if fatal or "authentication" in text:
                    return 3
        return 0

    def _give_back(self, wanted: list[tuple[int, int]]) -> None:
        """The server asks back jobs this pilot holds but has not started (another pilot of the
        queue has a free slot): return those still queued; the others already run here."""
        asked = {(job_id, attempt) for job_id, attempt in wanted}
        back = [p for p in self.queued if (p.job_id, p.attempt) in asked]
        for payload in back:
            self.queued.remove(payload)
        self.send(protocol.Returned(jobs=[(p.job_id, p.attempt) for p in back], want=self.want()))

    def _kill(self, job_id: int) -> None:
        for payload in list(self.queued):
            if payload.job_id == job_id:
                self.queued.remove(payload)
        self.runner.kill(job_id, ErrorCode.KILLED_ON_REQUEST, "killed on request of the server")

    def _start_queued(self) -> None:
        while self.queued and not self.draining:
            head = self.queued[0]
            if head.cores > self.cfg.cores:
                self.queued.popleft()
                self._refuse(head, f"job needs {head.cores} cores, this pilot has {self.cfg.cores}")
                continue
            held = self.runner.attempt_of(head.job_id)
            if held is not None:
                if held >= head.attempt:  # the same attempt twice: keep the running one
                    self.queued.popleft()
                    continue
                # A newer attempt of a job we still run (we were declared lost and came back):
                # the old attempt is stale, so stop it and start the new one when its slot frees.
                self.runner.kill(head.job_id, ErrorCode.KILLED_ON_REQUEST, "superseded by a newer attempt")
                return
            if head.cores > self.runner.free_slots():
                return
            self.queued.popleft()
            self.runner.submit(head)
            if not self.starts:
                self.starts_since = time.time()
            self.starts[head.job_id] = (head.attempt, time.time())

    def _refuse(self, payload: Payload, diag: str) -> None:
        now = time.time()
        outcome = Outcome(
            job_id=payload.job_id,
            attempt=payload.attempt,
            ok=False,
            error_code=int(ErrorCode.BAD_PAYLOAD),
            error_diag=diag,
            started_at=now,
            ended_at=now,
        )
        self._report([outcome])

    def _report(self, outcomes: list[Outcome]) -> None:
        """Queue outcomes for the server (see :meth:`_flush_results`) and refill the slots."""
        if not outcomes:
            return
        now = time.time()
        for o in outcomes:
            if o.ended_at > o.started_at > 0:
                ran = o.ended_at - o.started_at
                self.mean_runtime = ran if self.mean_runtime is None else 0.9 * self.mean_runtime + 0.1 * ran
        if not self.results:
            self.results_since = now
        for o in outcomes:
            start = self.starts.get(o.job_id)
            if start is not None and start[0] == o.attempt:
                del self.starts[o.job_id]  # its outcome says it started
        self.results.extend(outcomes)
        self.done += len(outcomes)
        self.last_activity = now
        self._start_queued()

    def _flush_results(self, force: bool = False) -> None:
        """Send the queued outcomes in one message when nothing else is running (so a lone task's
        result goes at once), when the oldest has waited ``report_linger``, or when many wait:
        short jobs then share messages, and the server one transaction, instead of one each."""
        now = time.time()
        if not self.results:
            if self.starts and (force or now - self.starts_since >= self.cfg.start_linger):
                started = self._take_starts(now, force)
                if started:
                    self.send(protocol.Started(jobs=started))
            return
        if not (
            force
            or not self.runner.held()
            or now - self.results_since >= self.cfg.report_linger
            or len(self.results) >= _RESULTS_PER_MESSAGE
        ):
            return
        sent, self.results = self.results, []
        for o in sent:
            self.unacked[(o.job_id, o.attempt)] = (now, o)
        self._send_outcomes(sent, self._take_starts(now, force) if self.starts else [])

    def _send_outcomes(
        self, outcomes: list[Outcome], started: list[tuple[int, int, float]] | None = None
    ) -> None:
        """Report outcomes (and starts: the first message carries them), in messages of at most
        _RESULTS_PER_MESSAGE outcomes."""
        for i in range(0, len(outcomes), _RESULTS_PER_MESSAGE):
            chunk = outcomes[i : i + _RESULTS_PER_MESSAGE]
            self.send(protocol.Report(outcomes=chunk, started=started or [], want=self.want()))
            started = None

    def _take_starts(self, now: float, everything: bool = False) -> list[tuple[int, int, float]]:
        """The starts to report now: those older than ``start_linger`` (all, with ``everything``)."""
        due = [
            job_id
            for job_id, (_a, t) in self.starts.items()
            if everything or now - t >= self.cfg.start_linger
        ]
        started = [(job_id, self.starts[job_id][0], round(self.starts.pop(job_id)[1], 3)) for job_id in due]
        self.starts_since = min((t for _a, t in self.starts.values()), default=0.0)
        return started

    def _resend(self, now: float) -> None:
        stale = [o for (t, o) in self.unacked.values() if now - t >= _RESEND_AFTER]
        self._send_outcomes(stale)
        t = time.time()
        for o in stale:
            self.unacked[(o.job_id, o.attempt)] = (t, o)

    def _abandoned(self, now: float) -> bool:
        """True when the server has been silent too long, or the process we serve is gone."""
        if self.cfg.server_timeout and now - self.last_heard > self.cfg.server_timeout:
            log.error("no word from the server for %.0f s: giving up", now - self.last_heard)
            return True
        if self.cfg.exit_with and not psutil.pid_exists(self.cfg.exit_with):
            log.warning("process %d that started this pilot is gone: exiting", self.cfg.exit_with)
            return True
        return False

    def _idle_expired(self, now: float) -> bool:
        if not self.cfg.idle_timeout or self.queued or self.runner.held() or self.unacked or self.results:
            return False
        return now - self.last_activity > self.cfg.idle_timeout

    def _on_term(self, *_: Any) -> None:
        self.draining = True
        self.stopping = True

    def _drain(self) -> None:
        """Report everything held as terminated, wait briefly for acks, then leave."""
        log.info(
            "terminating: reporting %d running and %d queued jobs",
            len(self.runner.running()),
            len(self.queued),
        )
        self.send(protocol.Request(want=protocol.Want(n=0)))
        # Jobs not started go back to the server at once, their attempt unspent.
        if self.queued:
            self.send(protocol.Returned(jobs=[(p.job_id, p.attempt) for p in self.queued]))
        self.queued.clear()
        outcomes = self.runner.stop()
        self._report(outcomes)
        self._flush_results(force=True)
        deadline = time.time() + 5.0
        while self.unacked and time.time() < deadline:
            if self.sock.poll(200, zmq.POLLIN):
                self._receive()

    def _shutdown(self) -> None:
        try:
            self.send(protocol.Bye())
        except zmq.ZMQError:
            pass
        self.runner.stop()
        self.sock.close(linger=1000)
