"""Memory and walltime limits: the runner's monitor thread samples the memory of running payloads
and kills those over their limits (:class:`LimitEnforcer`).

The monitor only *decides* (:meth:`~LimitEnforcer._mark_killed`) and sends signals: the process
death that follows wakes the pilot thread, which reports the outcome with the code the monitor
recorded. So every outcome is built in one place, and a job is reported exactly once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

import psutil

from pandaflow.errorcodes import ErrorCode
from pandaflow.pilot import monitor
from pandaflow.pilot.payload import MAX_SAMPLES, RunningPayload
from pandaflow.pilot.processes import signal_processes

if TYPE_CHECKING:
    from pandaflow.pilot.python_workers import Worker

log = logging.getLogger(__name__)


class LimitEnforcer:
    """Sampling and killing for :class:`~pandaflow.pilot.runner.PayloadRunner` (a part of it,
    whose state it shares): the monitor thread's loop, and the kill decisions and signals that
    the pilot thread (``kill``, ``stop``) uses too."""

    sample_interval: float
    _lock: threading.Lock
    _jobs: dict[int, RunningPayload]
    _stop_event: threading.Event

    # ------------------------------------------------------------------ killing

    def _mark_killed(self, job: RunningPayload, code: int, diag: str) -> None:
        """Record the decision to kill ``job`` (lock held); the first decision wins."""
        if job.kill_code is None:
            job.kill_code = code
            job.kill_diag = diag
        if job.worker is not None:
            job.worker.doomed = True

    def _signal_tree(self, job: RunningPayload, sig: int) -> None:
        if job.worker is not None:
            self._signal_worker(job.worker, sig)
        elif job.popen is not None and not job.reaped:
            if job.ps is None:
                try:  # safe before reaping: the unreaped pid cannot belong to another process
                    job.ps = psutil.Process(job.popen.pid)
                except psutil.Error:
                    pass
            signal_processes(job.ps, job.popen.pid, sig)

    def _signal_worker(self, w: Worker, sig: int) -> None:
        if not w.dead:
            signal_processes(w.ps, w.pid, sig)

    # ------------------------------------------------------------------ monitor thread

    def _monitor_loop(self) -> None:
        tick = min(0.1, self.sample_interval)  # walltime is enforced to within a tick
        while not self._stop_event.wait(tick):
            try:
                self._monitor_once()
            except Exception:  # the monitor must survive anything a payload does to /proc
                log.exception("payload monitor failed")

    def _monitor_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [j for j in self._jobs.values() if j.kill_code is None
                   and (j.next_sample <= now or (j.deadline is not None and j.deadline <= now))]  # fmt: skip
        if not due:
            return
        sample = [j for j in due if j.next_sample <= now]
        measured: dict[int, tuple[float, float, float]] = {}
        if sample:
            kids = monitor.children_map() if len(sample) > 1 else None  # one /proc scan for all trees
            for job in sample:
                root = job.worker.pid if job.worker is not None else job.popen.pid  # type: ignore[union-attr]
                rss, pss, _ = monitor.sample_tree(root, pss=True, children=kids)
                measured[id(job)] = (time.time() - job.started_at, rss, pss)
        kills = []
        with self._lock:
            for job in due:
                if self._jobs.get(job.payload.job_id) is not job or job.kill_code is not None:
                    continue  # finished or killed meanwhile
                point = measured.get(id(job))
                if point is not None:
                    self._record_sample(job, point, now)
                p = job.payload
                elapsed = now - job.t0
                if point is not None and p.memory_mb and point[1] > p.memory_mb:
                    diag = f"killed: RSS {point[1]:.0f} MB exceeded limit {p.memory_mb} MB"
                    self._mark_killed(job, int(ErrorCode.OUT_OF_MEMORY), diag)
                    kills.append(job)
                elif job.deadline is not None and now >= job.deadline:
                    diag = f"killed: ran {elapsed:.1f} s, exceeding walltime limit {p.walltime_s:g} s"
                    self._mark_killed(job, int(ErrorCode.WALLTIME_EXCEEDED), diag)
                    kills.append(job)
        for job in kills:
            log.info("job %d: %s", job.payload.job_id, job.kill_diag)
            self._signal_tree(job, signal.SIGKILL)

    def _record_sample(self, job: RunningPayload, point: tuple[float, float, float], now: float) -> None:
        _, rss, pss = point
        job.rss, job.pss = rss, pss
        job.max_rss = max(job.max_rss, rss)
        job.max_pss = max(job.max_pss, pss)
        job.next_sample = now + self.sample_interval
        # Keep every stride-th sample; when the list is full, drop every other one and double the
        # stride, so a long job's series stays evenly spaced and bounded.
        if job.n_samples % job.stride == 0:
            job.samples.append(point)
            if len(job.samples) >= MAX_SAMPLES:
                job.samples = job.samples[::2]
                job.stride *= 2
        job.n_samples += 1
