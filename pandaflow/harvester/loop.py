"""The harvester loop: keep the right number of pilots alive on every queue that names a provider.

Each cycle, for every such queue (each step in its own short transaction, never holding the
database while a provider works):

1. **follow** the queue's live workers (:mod:`pandaflow.harvester.follow`): ask the provider for
   their states (``status``), move the worker rows accordingly, and catch the ones that went
   wrong: a job that ended without its pilot registering, a pilot that did not register within
   ``arrival_timeout_s`` of its job starting, a pilot that stopped heartbeating while its job
   still runs (both cancelled);
2. **count** demand and supply (:mod:`pandaflow.harvester.accounting`);
3. **decide** (:mod:`pandaflow.harvester.policy`), then **cancel** and **submit** through the
   provider (:mod:`pandaflow.harvester.provision`). Each submission is a row first (its id is
   the pilot's ``--worker-id``), then ``provider.submit(command, tasks_per_node=1, job_name=...)``;
   on a push queue the row's transaction also reserves the ready jobs the worker will run
   (:mod:`pandaflow.server.dispatch.push`);
4. **record** what it saw and did (:mod:`pandaflow.harvester.report`) in ``harvester_queues``
   (shown by ``pandaflow workers``).

A provider that raises never stops the loop: the error is logged, kept in :attr:`Harvester.errors`
and in the queue's ``harvester_queues.error``, a failed submission fails its worker row with
the provider's message, and further submissions to that queue back off (doubling, up to 10 min).
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from pandaflow import config as pf_config
from pandaflow import providers
from pandaflow.harvester import accounting, policy, provision
from pandaflow.harvester import workers as w
from pandaflow.harvester.config import HarvesterConfig
from pandaflow.harvester.follow import follow_workers
from pandaflow.harvester.report import QueueReport, action_text, say
from pandaflow.server.jobs.queues import Queue, QueueConfigError, parse_queues, stored_descriptions

log = logging.getLogger(__name__)


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
        self._backoff = provision.Backoff()
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
                f"cannot set up provider {queue.setting('provider').get('name')!r}: {say(exc)}"
            )
        if provider is not None:
            try:
                cancels = follow_workers(self.engine, self.name, queue, limits, provider)
                if cancels:
                    provision.cancel(self.engine, provider, cancels, report)
            except Exception as exc:
                report.errors.append(f"following workers failed: {say(exc)}")
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
        until, failure = self._backoff.paused(queue.name)
        if decision.submit and now < until:
            decision.submit = 0
            decision.reasons.append(f"backing off after a failed submission for {until - now:.1f} s")
            report.errors.append(f"the last submission failed: {failure}")
        if provider is not None and decision.cancel:
            byid = {wk.id: wk for wk in snap.workers}
            report.cancelled = provision.cancel(
                self.engine,
                provider,
                [(byid[i], w.CANCELLED, "scaled in: " + decision.reason) for i in decision.cancel],
                report,
            )
        if provider is not None and decision.submit:
            report.submitted = provision.submit(
                self.engine, self.name, queue, limits, provider, decision.submit, report,
                command=lambda worker_id: self.pilot_command(queue, limits, worker_id),
                backoff=self._backoff, cycle=self.cfg.interval,
            )  # fmt: skip
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
            "action": action_text(report),
            "error": "; ".join(report.errors)[-4000:],
        }
        if report.errors:
            values["error_at"] = values["cycle_at"]
        with self.engine.begin() as conn:
            w.record_queue(conn, self.name, report.queue, values)


def _double_quoted(text: str) -> str:
    return '"' + "".join("\\" + c if c in '"\\`' else c for c in text) + '"'
