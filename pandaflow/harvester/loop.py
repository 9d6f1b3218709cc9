"""The harvester loop: keep the right number of pilots alive on every queue that names a provider.

Each cycle, for every such queue (each step in its own short transaction, never holding the
database while a provider works):

1. **follow** the queue's live workers: ask the provider for their states (``status``), move the
   worker rows accordingly, and catch the ones that went wrong: a job that ended without its
   pilot registering, a pilot that did not register within ``arrival_timeout_s`` of its job
   starting, a pilot that stopped heartbeating while its job still runs (both cancelled);
2. **count** demand and supply (:mod:`pandaflow.harvester.accounting`);
3. **decide** (:mod:`pandaflow.harvester.policy`), then **cancel** and **submit** through the
   provider. Each submission is a row first (its id is the pilot's ``--worker-id``), then
   ``provider.submit(command, tasks_per_node=1, job_name=...)``; on a push queue the row's
   transaction also reserves the ready jobs the worker will run (:mod:`pandaflow.server.push`);
4. **record** what it saw and did in ``harvester_queues`` (shown by ``pandaflow workers``).

A provider that raises never stops the loop: the error is logged, kept in :attr:`Harvester.errors`
and in the queue's ``harvester_queues.error``, a failed submission fails its worker row with
the provider's message, and further submissions to that queue back off (doubling, up to 10 min).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from pandaflow import config as pf_config
from pandaflow import providers
from pandaflow.harvester import accounting, policy
from pandaflow.harvester import workers as w
from pandaflow.server import pilots as pilot_registry
from pandaflow.server import push
from pandaflow.server.queues import Queue, QueueConfigError, parse_queues, stored_descriptions

log = logging.getLogger(__name__)

_MAX_BACKOFF = 600.0
_TAIL = 1500  # characters of a failed job's stderr kept in the worker's error


@dataclass
class HarvesterConfig:
    """Settings of one harvester (``pandaflow harvester --help`` documents each)."""

    zmq_endpoint: str  # where pilots find the server's dispatcher
    token: str | None = None  # written to ``workdir/token`` for pilots, unless token_file is given
    token_file: str | None = None  # a token file pilots can read (on a shared file system)
    workdir: str = field(default_factory=lambda: str(pf_config.home() / "harvester"))
    name: str = field(default_factory=socket.gethostname)  # a harvester follows its own workers only
    interval: float = 10.0  # seconds between cycles
    python: str = sys.executable  # the interpreter pilots run with
    queues: list[Queue] | None = None  # default: read from the server's database every cycle

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, got {self.interval}")
        if not self.token and not self.token_file:
            raise ValueError("the harvester needs the server's token (token or token_file) for its pilots")


@dataclass
class QueueReport:
    """What one cycle saw and did on a queue."""

    queue: str
    ready_jobs: int = 0
    ready_cores: int = 0
    unfit_jobs: int = 0
    reserved_jobs: int = 0  # push queues: jobs waiting for the worker they are reserved for
    idle_slots: int = 0
    queued_workers: int = 0
    running_workers: int = 0
    submitted: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    reserved_now: int = 0  # jobs reserved for the workers submitted this cycle
    action: str = ""
    errors: list[str] = field(default_factory=list)


class Harvester:
    """Provisions pilot workers for the queues of one job server database."""

    def __init__(self, engine: Engine, cfg: HarvesterConfig):
        self.engine = engine
        self.cfg = cfg
        self.name = cfg.name
        self.workdir = Path(cfg.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if cfg.token_file:
            self.token_file = str(Path(cfg.token_file).resolve())
        else:
            self.token_file = str(self.workdir / "token")
            pf_config.write_private(Path(self.token_file), cfg.token or "")
        self.errors: dict[str, str] = {}  # queue -> what failed in its last cycle
        self.reports: dict[str, QueueReport] = {}
        self.cycles = 0
        self._providers: dict[str, tuple[str, Any]] = {}  # queue -> (block key, provider)
        self._idle: dict[str, dict[int, tuple[float, int]]] = {}  # queue -> pilot -> (idle since, ended)
        self._busy_at: dict[str, float] = {}  # queue -> last time it had ready work
        self._backoff: dict[str, tuple[float, float, str]] = {}  # queue -> (not before, delay, error)
        self._queue_cache: tuple[tuple[str, ...], list[Queue]] = ((), [])
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- thread control
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="pandaflow-harvester", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Cycle every ``interval`` seconds until :meth:`stop`."""
        log.info(
            "harvester %s: work dir %s, pilots connect to %s", self.name, self.workdir, self.cfg.zmq_endpoint
        )
        while not self._stop.is_set():
            started = time.time()
            try:
                self.cycle()
            except Exception:  # a bug, or the database away: try again next cycle
                log.exception("harvester cycle failed")
            self._stop.wait(max(0.0, self.cfg.interval - (time.time() - started)))

    # ---------------------------------------------------------------- one cycle
    def queues(self) -> list[Queue]:
        """The queues to serve: the configured ones, else the server's (its ``queues`` table)."""
        if self.cfg.queues is not None:
            return self.cfg.queues
        with self.engine.connect() as conn:
            rows = stored_descriptions(conn)
        if rows != self._queue_cache[0]:
            try:
                found = parse_queues([json.loads(r) for r in rows], "the server database's queues table")
            except (QueueConfigError, ValueError) as exc:
                log.error("harvester: cannot use the queues in the database: %s", exc)
                return self._queue_cache[1]
            self._queue_cache = (rows, found)
        return self._queue_cache[1]

    def cycle(self) -> dict[str, QueueReport]:
        """Serve every queue that has a provider once; returns what was done, by queue."""
        reports = {}
        for queue in self.queues():
            if queue.setting("provider") is None:
                continue
            report = QueueReport(queue.name)
            try:
                self._cycle_queue(queue, report)
            except Exception as exc:
                log.exception("harvester: queue %s", queue.name)
                report.errors.append(f"{type(exc).__name__}: {exc}")
            if report.errors:
                self.errors[queue.name] = "; ".join(report.errors)
            else:
                self.errors.pop(queue.name, None)
            try:
                self._record(report)
            except Exception:
                log.exception("harvester: cannot record the status of queue %s", queue.name)
            reports[queue.name] = report
        self.reports = reports
        self.cycles += 1
        return reports

    def _cycle_queue(self, queue: Queue, report: QueueReport) -> None:
        limits = policy.Limits.of(queue)
        provider = None
        try:
            provider = self.provider(queue, limits)
        except Exception as exc:
            report.errors.append(
                f"cannot set up provider {queue.setting('provider').get('name')!r}: {_say(exc)}"
            )
        if provider is not None:
            try:
                self._follow(queue, limits, provider, report)
            except Exception as exc:
                report.errors.append(f"following workers failed: {_say(exc)}")
        now = time.time()
        with self.engine.connect() as conn:
            snap = accounting.snapshot(conn, queue.name, limits.worker_cores, limits.worker_memory_mb)
            window = limits.rate_window()
            recent = w.submitted_since(conn, queue.name, now - window[1]) if window else 0
        decision = policy.decide(
            limits,
            snap,
            harvester=self.name,
            recent_submissions=recent,
            pilot_idle_s=self._pilot_idle(queue.name, snap, now),
            quiet_s=self._quiet(queue.name, snap, now),
        )
        report.ready_jobs, report.ready_cores, report.unfit_jobs = (
            snap.ready_jobs,
            snap.ready_cores,
            snap.unfit_jobs,
        )
        report.idle_slots = snap.idle_slots
        report.reserved_jobs = snap.reserved_jobs
        if decision.submit and not queue.online:
            decision.submit = 0
            decision.reasons.append(f"queue is {queue.status}: no new workers")
        until, _delay, failure = self._backoff.get(queue.name, (0.0, 0.0, ""))
        if decision.submit and now < until:
            decision.submit = 0
            decision.reasons.append(f"backing off after a failed submission for {until - now:.1f} s")
            report.errors.append(f"the last submission failed: {failure}")
        if provider is not None and decision.cancel:
            byid = {wk.id: wk for wk in snap.workers}
            report.cancelled = self._cancel(
                provider,
                [(byid[i], w.CANCELLED, "scaled in: " + decision.reason) for i in decision.cancel],
                report,
            )
        if provider is not None and decision.submit:
            report.submitted = self._submit(queue, limits, provider, decision.submit, report)
        report.action = decision.reason or "nothing to do"
        with self.engine.connect() as conn:
            live = w.live(conn, queue=queue.name)
        report.queued_workers = sum(1 for wk in live if wk.state == w.SUBMITTED)
        report.running_workers = sum(1 for wk in live if wk.state == w.RUNNING)

    # ---------------------------------------------------------------- providers
    def provider(self, queue: Queue, limits: policy.Limits) -> Any:
        """The queue's provider instance, built on first use and again when its block changes."""
        block = queue.setting("provider")
        key = json.dumps([block, limits.worker_cores, limits.worker_memory_mb], sort_keys=True)
        cached = self._providers.get(queue.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        instance = providers.build(
            block,
            script_dir=str(self.workdir / "scripts" / queue.name),
            cores=limits.worker_cores,
            memory_mb=limits.worker_memory_mb,
            where=f"queue {queue.name!r} provider",
            preemptible=queue.setting("preemptible"),
        )
        self._providers[queue.name] = (key, instance)
        return instance

    def pilot_command(self, queue: Queue, limits: policy.Limits, worker_id: int) -> str:
        """The shell command a worker runs: a pilot for the queue, tied to the worker's row."""
        base = queue.setting("worker_workdir") or str(self.workdir / "pilots")
        # The pilot's own idle exit is a backstop for when no harvester is left to scale it in.
        idle = 2 * limits.worker_idle_s + 60 if limits.worker_idle_s else 0
        memory = ["--memory", str(limits.worker_memory_mb)] if limits.worker_memory_mb else []
        parts = [
            shlex.quote(self.cfg.python), "-m", "pandaflow.pilot",
            "--zmq", shlex.quote(self.cfg.zmq_endpoint),
            "--queue", shlex.quote(queue.name),
            "--cores", str(limits.worker_cores), *memory,
            "--token-file", shlex.quote(self.token_file),
            "--worker-id", str(worker_id),
            "--idle-timeout", f"{idle:g}",
            # Double quotes: $VARIABLES in worker_workdir expand on the worker node.
            "--workdir", _double_quoted(f"{base}/{queue.name}-{worker_id}"),
        ]  # fmt: skip
        return " ".join(parts)

    # ---------------------------------------------------------------- following workers
    def _follow(self, queue: Queue, limits: policy.Limits, provider: Any, report: QueueReport) -> None:
        now = time.time()
        with self.engine.connect() as conn:
            own = w.live(conn, queue=queue.name, harvester=self.name)
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
        with self.engine.begin() as conn:
            for wk, to, batch, error in moves:
                if to == wk.state:
                    w.note(conn, wk.id, now, batch_state=batch or "")
                else:
                    w.move(conn, wk.id, to, now, batch_state=batch, error=error)
        for wk, to, _b, _e in moves:
            if to not in w.LIVE_STATES and wk.provider_job_id:
                _forget(provider, wk.provider_job_id)
        if cancels:
            self._cancel(provider, cancels, report)

    def _cancel(
        self, provider: Any, items: list[tuple[w.Worker, str, str]], report: QueueReport
    ) -> list[int]:
        """Cancel workers through the provider; those it confirms move to their given state."""
        with_job = [item for item in items if item[0].provider_job_id]
        done: list[int] = []
        now = time.time()
        if with_job:
            try:
                results = list(provider.cancel([wk.provider_job_id for wk, _t, _e in with_job]))
            except Exception as exc:
                report.errors.append(f"cancel failed: {_say(exc)}")
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
        with self.engine.begin() as conn:
            for worker_id in done:
                wk, to, error = targets[worker_id]
                w.move(conn, worker_id, to, now, batch_state="CANCELLED", error=error)
        for worker_id in done:
            if targets[worker_id][0].provider_job_id:
                _forget(provider, targets[worker_id][0].provider_job_id)
        if done:
            log.info("harvester: queue %s: cancelled workers %s", items[0][0].queue, done)
        return done

    def _submit(
        self, queue: Queue, limits: policy.Limits, provider: Any, n: int, report: QueueReport
    ) -> list[int]:
        submitted = []
        name = queue.setting("provider")["name"]
        for _ in range(n):
            now = time.time()
            reserved: list[int] = []
            with self.engine.begin() as conn:
                worker_id = w.create(
                    conn,
                    queue=queue.name,
                    harvester=self.name,
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
            command = self.pilot_command(queue, limits, worker_id)
            try:
                job_id = provider.submit(
                    command, tasks_per_node=1, job_name=f"pandaflow-{queue.name}-{worker_id}"
                )
                if not job_id:
                    raise RuntimeError("the provider returned no job id")
            except Exception as exc:
                error = f"submit failed: {_say(exc)}"
                with self.engine.begin() as conn:
                    w.move(conn, worker_id, w.FAILED, time.time(), error=error)
                report.errors.append(f"worker {worker_id}: {error}")
                _until, delay, _failure = self._backoff.get(queue.name, (0.0, 0.0, ""))
                delay = min(_MAX_BACKOFF, max(2 * self.cfg.interval, 2 * delay))
                self._backoff[queue.name] = (time.time() + delay, delay, error)
                log.warning("harvester: queue %s: %s; next try in %.1f s", queue.name, error, delay)
                break
            job_id = str(job_id)
            with self.engine.begin() as conn:
                w.accepted(
                    conn, worker_id, job_id, json.dumps(providers.bookkeeping(provider, job_id)), time.time()
                )
            self._backoff.pop(queue.name, None)
            submitted.append(worker_id)
            report.reserved_now += len(reserved)
        if submitted:
            log.info("harvester: queue %s: submitted workers %s", queue.name, submitted)
        return submitted

    # ---------------------------------------------------------------- memory between cycles
    def _pilot_idle(self, queue: str, snap: accounting.Snapshot, now: float) -> dict[int, float]:
        """Seconds each active pilot has held no job, as far as this harvester has seen."""
        seen = self._idle.setdefault(queue, {})
        idle = {}
        for p in snap.pilots.values():
            before = seen.get(p.id)
            if p.held_cores:
                since = now
            elif before is None:
                since = p.registered_at if p.ended_jobs == 0 else now
            elif before[1] != p.ended_jobs:
                since = now  # it ran jobs between two looks
            else:
                since = before[0]
            seen[p.id] = (since, p.ended_jobs)
            idle[p.id] = now - since
        for gone in set(seen) - set(snap.pilots):
            del seen[gone]
        return idle

    def _quiet(self, queue: str, snap: accounting.Snapshot, now: float) -> float:
        if snap.ready_jobs:
            self._busy_at[queue] = now
        return now - self._busy_at.setdefault(queue, self._started)

    def _record(self, report: QueueReport) -> None:
        values = {
            "cycle_at": time.time(),
            "ready_jobs": report.ready_jobs,
            "ready_cores": report.ready_cores,
            "unfit_jobs": report.unfit_jobs,
            "idle_slots": report.idle_slots,
            "queued_workers": report.queued_workers,
            "running_workers": report.running_workers,
            "action": _action_text(report),
            "error": "; ".join(report.errors)[-4000:],
        }
        if report.errors:
            values["error_at"] = values["cycle_at"]
        with self.engine.begin() as conn:
            w.record_queue(conn, self.name, report.queue, values)


def _action_text(report: QueueReport) -> str:
    done = []
    if report.submitted:
        reserved = f" with {report.reserved_now} jobs reserved" if report.reserved_now else ""
        done.append(f"submitted {len(report.submitted)}{reserved}")
    if report.cancelled:
        done.append(f"cancelled {len(report.cancelled)}")
    return (", ".join(done) + ": " if done else "") + report.action


def _say(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _double_quoted(text: str) -> str:
    return '"' + "".join("\\" + c if c in '"\\`' else c for c in text) + '"'


def _started(wk: w.Worker, now: float) -> w.Worker:
    from dataclasses import replace

    return replace(wk, state=w.RUNNING, started_at=wk.started_at or now)


def _forget(provider: Any, job_id: str) -> None:
    """Drop a finished job from the provider's own bookkeeping (parsl never prunes it)."""
    resources = getattr(provider, "resources", None)
    if isinstance(resources, dict):
        resources.pop(job_id, None)


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
