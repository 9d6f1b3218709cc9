"""Running payloads on a pilot's slots: :class:`PayloadRunner`.

Two kinds of payload:

* ``python``: a parsl task buffer (``pack_apply_message``), run in a *warm* worker process
  exactly as parsl's HighThroughputExecutor worker runs it (``execute_task`` then
  ``serialize``), so the client can ``deserialize`` the result or exception unchanged.
  Workers are started once and reused; a task costs two pipe messages, not a process.
* ``shell``: a command line run by ``/bin/bash -c`` in its own session and job directory.

Who does what:

* The pilot thread calls :meth:`~PayloadRunner.submit`, :meth:`~PayloadRunner.wait`,
  :meth:`~PayloadRunner.kill`, :meth:`~PayloadRunner.running` and :meth:`~PayloadRunner.stop`.
  It alone reads worker pipes, reaps processes and builds outcomes, which it puts on one
  internal queue that :meth:`~PayloadRunner.wait` drains.
* A monitor thread samples the memory of payloads that have been running for a while and
  kills those over their memory or walltime limit. It only *decides* and sends signals: the
  resulting process death wakes the pilot thread, which reports the outcome with the code the
  monitor recorded. So every outcome is built in one place, and a job is reported exactly once.

Everything the pilot thread waits on (worker pipes, worker sentinels, pidfds of shell
payloads, a self-pipe) is registered in one selector whose own fd is offered by
:meth:`~PayloadRunner.fileno_for_wakeup`, so the pilot can poll it together with its socket.

Where each part lives: :mod:`~pandaflow.pilot.payload` (:class:`Payload`, :class:`Outcome`, the
record of a running payload), :mod:`~pandaflow.pilot.python_workers` (the warm workers, both
sides of the pipe), :mod:`~pandaflow.pilot.shell` (shell commands), :mod:`~pandaflow.pilot.limits`
(the monitor thread: sampling, limits, kill decisions), :mod:`~pandaflow.pilot.logcapture`
(bounded logs and tails) and :mod:`~pandaflow.pilot.processes` (signalling process trees).
:class:`PayloadRunner` itself holds the state those parts share, the public API, the event pump
and the one place outcomes are queued.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import threading
import time
from collections import deque
from typing import Any

from pandaflow.errorcodes import ErrorCode, describe
from pandaflow.pilot.limits import LimitEnforcer
from pandaflow.pilot.logcapture import read_tail, tail_text
from pandaflow.pilot.payload import (
    EV_DEATH,
    EV_RESULT,
    EV_SHELL,
    EV_WAKE,
    FIRST_SAMPLE_AFTER,
    PYTHON,
    SHELL,
    TAIL_BYTES,
    Outcome,
    Payload,
    RunningPayload,
)
from pandaflow.pilot.python_workers import PythonWorkers, Worker, mp_context
from pandaflow.pilot.shell import ShellPayloads

__all__ = ["Outcome", "Payload", "PayloadRunner"]

log = logging.getLogger(__name__)

_TAIL_TTL = 0.5  # seconds a shell payload's tail read by running() is reused


class PayloadRunner(PythonWorkers, ShellPayloads, LimitEnforcer):
    """Runs payloads on ``slots`` cores: warm Python workers and shell commands, with limits.

    ``workdir`` holds one directory per shell payload attempt (``jobs/<job_id>.<attempt>/``).
    ``sample_interval`` is the period of memory sampling of each running payload; ``log_cap``
    bounds the log kept per payload; ``python_workers`` is the number of warm workers started
    up front (default: one per slot; more are started on demand, up to one per slot).

    A payload's ``memory_mb`` limit applies to the RSS of its whole process tree; for a Python
    payload that is the worker process, so it includes the worker's own baseline (the
    interpreter with parsl loaded, about 50 MB). Memory is first sampled 0.2 s after start.

    Only :meth:`start`, :meth:`submit`, :meth:`wait`, :meth:`kill`, :meth:`running`,
    :meth:`free_slots` and :meth:`stop` are public, and all must be called from one thread.
    """

    def __init__(self, slots: int, workdir: str, sample_interval: float = 1.0, log_cap: int = 4 << 20,
                 python_workers: int | None = None):  # fmt: skip
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self.workdir = os.path.abspath(workdir)
        self.sample_interval = max(0.01, float(sample_interval))
        self.log_cap = max(0, int(log_cap))
        self.python_workers = slots if python_workers is None else max(0, min(int(python_workers), slots))
        self._ctx = mp_context()
        self._lock = threading.Lock()
        self._jobs: dict[int, RunningPayload] = {}
        self._used = 0
        self._outcomes: deque[Outcome] = deque()
        self._workers: list[Worker] = []
        self._idle: list[Worker] = []
        self._exited: deque[RunningPayload] = deque()  # shell payloads reaped by a waiter thread (no pidfd)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, (EV_WAKE, None))
        self._stop_event = threading.Event()
        self._monitor: threading.Thread | None = None
        self._started = False
        self._stopping = False
        self._stopped = False

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the warm Python workers and the monitor thread (idempotent)."""
        if self._started:
            return
        if self._stopped:
            raise RuntimeError("the runner was stopped")
        self._started = True
        for _ in range(self.python_workers):
            self._idle.append(self._spawn_worker())
        self._monitor = threading.Thread(target=self._monitor_loop, name="pandaflow-monitor", daemon=True)
        self._monitor.start()

    def free_slots(self) -> int:
        """Slots not occupied by a running payload (a payload with ``cores=k`` occupies k)."""
        return self.slots - self._used

    def submit(self, payload: Payload) -> None:
        """Start ``payload`` now.

        A malformed payload is not started: it ends at once with a BAD_PAYLOAD outcome, as does
        one whose job directory cannot be created (DISK_FULL or ENV_CHECK_FAILED).
        Raises ``RuntimeError`` if the runner is not running or too few slots are free, and
        ``ValueError`` if a payload of the same job is already running.
        """
        if not self._started or self._stopping:
            raise RuntimeError("the runner is not running")
        problem = self._validate(payload)
        if problem:
            self._finish_now(payload, ErrorCode.BAD_PAYLOAD, problem)
            return
        if payload.job_id in self._jobs:
            raise ValueError(f"job {payload.job_id} is already running")
        free = self.slots - self._used
        if payload.cores > free:
            raise RuntimeError(f"job {payload.job_id} needs {payload.cores} slots, {free} free")
        if payload.kind == PYTHON:
            self._submit_python(payload)
        else:
            self._submit_shell(payload)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Block up to ``timeout`` seconds (``None``: forever) until at least one payload ends.

        Returns every outcome available by then (empty on timeout); ``wait(0)`` only collects.
        """
        if self._stopped:
            return []
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._outcomes:
                self._pump(0)  # also collect whatever else is ready right now
            else:
                self._pump(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if self._outcomes:
                with self._lock:
                    done = list(self._outcomes)
                    self._outcomes.clear()
                return done
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def held(self) -> int:
        """How many payloads are running (cheap: for the pilot's hot path)."""
        return len(self._jobs)

    def attempt_of(self, job_id: int) -> int | None:
        """The attempt of ``job_id`` this runner is running, or None (cheap)."""
        job = self._jobs.get(job_id)
        return job.payload.attempt if job is not None else None

    def running(self) -> dict[int, dict[str, Any]]:
        """Running payloads for heartbeats: ``job_id -> {attempt, started_at, rss_mb, pss_mb, tail, ...}``.

        Memory figures are the latest sample (0 before the first one). ``tail`` is the last
        2 KiB of a shell payload's log; a Python task's output is only known when it ends.
        """
        with self._lock:
            jobs = list(self._jobs.values())
        now = time.monotonic()
        info = {}
        for job in jobs:
            if job.log_path and now - job.tail_at >= _TAIL_TTL:
                job.tail = tail_text(read_tail(job.log_path, TAIL_BYTES))
                job.tail_at = now
            p = job.payload
            info[p.job_id] = {
                "attempt": p.attempt,
                "started_at": job.started_at,
                "rss_mb": job.rss,
                "pss_mb": job.pss,
                "max_rss_mb": job.max_rss,
                "tail": job.tail,
                "kind": p.kind,
                "cores": p.cores,
            }
        return info

    def kill(self, job_id: int, error_code: int = ErrorCode.KILLED_ON_REQUEST, diag: str = "") -> bool:
        """Kill a running payload; its outcome (with ``error_code``) comes out of :meth:`wait`.

        Returns False if the job is not running here. If the payload was already being killed,
        the first reason stands.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            self._mark_killed(job, int(error_code), diag or f"killed: {describe(error_code)}")
        self._signal_tree(job, signal.SIGKILL)
        return True

    def stop(self, grace: float = 5.0) -> list[Outcome]:
        """Terminate all payloads (PILOT_TERMINATED) and workers; return the outcomes not yet collected.

        Payloads get SIGTERM, then SIGKILL after ``grace`` seconds; idle workers are asked to exit.
        Never blocks much longer than ``grace``. Calling it again returns an empty list.
        """
        if self._stopped:
            return []
        self._stopping = True
        if self._started:
            with self._lock:
                jobs = list(self._jobs.values())
                for job in jobs:
                    diag = "pilot terminated before the payload finished"
                    self._mark_killed(job, int(ErrorCode.PILOT_TERMINATED), diag)
            for job in jobs:
                self._signal_tree(job, signal.SIGTERM)
            for w in list(self._workers):
                if w.job is None and w.conn_open:
                    try:
                        w.conn.send(None)
                    except (OSError, ValueError):
                        pass
            self._pump_until_idle(time.monotonic() + max(0.0, grace))
            with self._lock:
                jobs = list(self._jobs.values())
            for job in jobs:
                self._signal_tree(job, signal.SIGKILL)
            for w in list(self._workers):
                self._signal_worker(w, signal.SIGKILL)
            self._pump_until_idle(time.monotonic() + 2.0)
            self._abandon_leftovers()
            self._stop_event.set()
            if self._monitor is not None:
                self._monitor.join(timeout=2.0)
        self._stopped = True
        with self._lock:
            done = list(self._outcomes)
            self._outcomes.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        return done

    def fileno_for_wakeup(self) -> int | None:
        """An fd that is readable whenever :meth:`wait` has something to return (or to collect).

        It is the fd of the runner's epoll (or kqueue) selector; ``None`` on platforms whose
        selector has no fd, where the caller must call ``wait`` with a short timeout instead.
        """
        fileno = getattr(self._sel, "fileno", None)
        return fileno() if fileno is not None else None

    # ------------------------------------------------------------------ submission

    @staticmethod
    def _validate(p: Payload) -> str:
        if not isinstance(p.cores, int) or p.cores < 1:
            return f"cores must be a positive integer, got {p.cores!r}"
        if p.kind == PYTHON:
            if not isinstance(p.buffer, (bytes, bytearray, memoryview)) or len(p.buffer) == 0:
                return "python payload without a task buffer"
        elif p.kind == SHELL:
            if not isinstance(p.command, str) or not p.command.strip():
                return "shell payload without a command"
        else:
            return f"unknown payload kind {p.kind!r}"
        return ""

    def _finish_now(self, p: Payload, code: ErrorCode, diag: str) -> None:
        now = time.time()
        outcome = Outcome(job_id=p.job_id, attempt=p.attempt, ok=False, error_code=int(code), error_diag=diag,
                          started_at=now, ended_at=now)  # fmt: skip
        with self._lock:
            self._outcomes.append(outcome)
        self._wake()

    def _new_job(self, p: Payload) -> RunningPayload:
        t0 = time.monotonic()
        return RunningPayload(payload=p, started_at=time.time(), t0=t0,
                              next_sample=t0 + min(FIRST_SAMPLE_AFTER, self.sample_interval),
                              deadline=t0 + p.walltime_s if p.walltime_s else None)  # fmt: skip

    # ------------------------------------------------------------------ events (pilot thread)

    def _wake(self) -> None:
        if self._stopped:
            return  # the pipe is closed, and its fd number may already belong to another file
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full, so already readable; or closed at stop

    def _pump(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for events and handle all that are ready."""
        for key, _ in self._sel.select(timeout):
            kind, obj = key.data
            if kind == EV_RESULT:
                if obj.conn_open:
                    self._on_result(obj)
            elif kind == EV_DEATH:
                self._on_death(obj)
            elif kind == EV_SHELL:
                self._on_shell_exit(obj)
            else:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                while self._exited:
                    self._on_shell_exit(self._exited.popleft())

    def _pump_until_idle(self, deadline: float) -> None:
        while (self._jobs or self._workers) and time.monotonic() < deadline:
            self._pump(min(0.1, max(0.0, deadline - time.monotonic())))

    def _release(self, job: RunningPayload) -> None:
        """Free the job's slots (lock held)."""
        if self._jobs.get(job.payload.job_id) is job:
            del self._jobs[job.payload.job_id]
            self._used -= job.payload.cores

    def _complete(self, job: RunningPayload, outcome: Outcome, ended: float) -> None:
        outcome.started_at = job.started_at
        outcome.ended_at = ended
        # Rounded as they are reported: a tenth of a MB, a hundredth of a second.
        outcome.max_rss_mb = round(job.max_rss, 1)
        outcome.max_pss_mb = round(job.max_pss, 1)
        outcome.memory_samples = [(round(t, 2), round(r, 1), round(p, 1)) for t, r, p in job.samples]
        with self._lock:
            self._outcomes.append(outcome)

    def _abandon_leftovers(self) -> None:
        """At stop, report what would not die even after SIGKILL (e.g. stuck in the kernel)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            with self._lock:
                self._release(job)
            p = job.payload
            code = job.kill_code if job.kill_code is not None else int(ErrorCode.PILOT_TERMINATED)
            diag = (job.kill_diag or "pilot terminated") + "; the payload did not exit after SIGKILL"
            self._complete(job, Outcome(p.job_id, p.attempt, False, code, diag), time.time())
            if job.pidfd is not None:
                os.close(job.pidfd)
                job.pidfd = None
        for w in list(self._workers):
            self._close_conn(w)
            self._workers.remove(w)
