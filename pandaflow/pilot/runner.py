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
"""

from __future__ import annotations

import errno
import io
import logging
import multiprocessing
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil

from pandaflow.errorcodes import ErrorCode, describe
from pandaflow.pilot import monitor

log = logging.getLogger(__name__)

PYTHON = "python"
SHELL = "shell"

TAIL_BYTES = 2048
"""Size of ``Outcome.stdout_tail`` and of the tail reported by :meth:`PayloadRunner.running`."""

MAX_SAMPLES = 500
"""Memory samples kept per payload; longer series are thinned evenly."""

FIRST_SAMPLE_AFTER = 0.2
"""Seconds after start of a payload's first memory sample: late enough that short tasks are never
sampled (psutil is not on the hot path), early enough to catch a quickly growing one."""

_RESULT_BUFFER_THRESHOLD = 1_000_000  # what parsl's HTEX worker passes to serialize()
_TAIL_TTL = 0.5  # seconds a shell payload's tail read by running() is reused
_MB = 1024 * 1024

# What the forkserver imports once, so that every (re)started worker has parsl ready in milliseconds.
_WORKER_PRELOAD = ["parsl.serialize", "parsl.executors.execute_task", "parsl.app.errors", __name__]

# Worker reply status.
_DONE, _RAISED, _UNPACK_FAILED, _UNSERIALIZABLE = range(4)

# Selector event kinds.
_EV_RESULT, _EV_DEATH, _EV_SHELL, _EV_WAKE = range(4)

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ProcessLookupError)


@dataclass(slots=True)
class Payload:
    """One attempt of a job, as the pilot hands it to the runner."""

    job_id: int
    attempt: int
    kind: str  # "python" (parsl buffer) or "shell" (command line)
    buffer: bytes | None = None  # parsl pack_apply_message buffer, for kind="python"
    command: str | None = None  # for kind="shell"; run with /bin/bash -c
    env: dict[str, str] | None = None  # extra environment for shell commands
    cores: int = 1
    memory_mb: int | None = None  # limit: kill if the payload tree's RSS exceeds it
    walltime_s: float | None = None  # limit: kill if it runs longer


@dataclass(slots=True)
class Outcome:
    """How one payload attempt ended, with everything the server records about it."""

    job_id: int
    attempt: int
    ok: bool  # True: finished successfully
    error_code: int  # ErrorCode value, 0 when ok
    error_diag: str = ""  # one-line human diagnosis
    exit_code: int | None = None  # shell exit code
    result: bytes | None = None  # python: parsl-serialized result, or RemoteExceptionWrapper
    result_is_exception: bool = False
    stdout_tail: str = ""  # last ~2 KiB of combined stdout/stderr
    log: bytes = b""  # combined stdout+stderr, capped (tail kept, first line says so)
    max_rss_mb: float = 0.0
    max_pss_mb: float = 0.0
    started_at: float = 0.0  # time.time()
    ended_at: float = 0.0
    # (t - started_at, rss_mb, pss_mb) per memory sample, at most MAX_SAMPLES of them
    memory_samples: list[tuple[float, float, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- worker process side


def _cap_log(data: bytes, cap: int, dropped: int = 0) -> bytes:
    """Keep the last ``cap`` bytes of ``data``; if anything was dropped, say so in a first line."""
    if len(data) > cap:
        dropped += len(data) - cap
        data = data[-cap:] if cap > 0 else b""
    if not dropped:
        return data
    note = f"[pandaflow: log truncated: the first {dropped} bytes were dropped, the last {len(data)} follow]"
    return note.encode() + b"\n" + data


class _Capture(io.TextIOBase):
    """Stands in for sys.stdout and sys.stderr during a task: keeps the text in memory, bounded."""

    encoding = "utf-8"  # some libraries consult sys.stdout.encoding

    def __init__(self, cap: int):
        super().__init__()
        self._parts: list[str] = []
        self._size = 0
        self._cap = cap
        self._dropped = 0  # bytes dropped from the front

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._parts.append(s)
        self._size += len(s)
        # Trim now and then, not per write, so a chatty task costs a list append per write.
        if self._size > 2 * self._cap + 65536:
            text = "".join(self._parts)
            cut = len(text) - self._cap
            self._dropped += len(text[:cut].encode("utf-8", "backslashreplace"))
            self._parts = [text[cut:]]
            self._size = self._cap
        return len(s)

    def getvalue(self) -> bytes:
        if not self._parts:
            return b""
        return _cap_log("".join(self._parts).encode("utf-8", "backslashreplace"), self._cap, self._dropped)


def _safe_str(obj: object, limit: int = 300) -> str:
    try:
        text = str(obj)
    except Exception:
        text = f"<unprintable {type(obj).__name__}>"
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failed_unpacking(tb: Any, execute_code: Any) -> bool:
    """True if the exception came from unpacking the buffer rather than from the task itself."""
    while tb is not None:
        if tb.tb_frame.f_code is execute_code:
            inner = tb.tb_next
            return inner is not None and inner.tb_frame.f_code.co_name == "unpack_apply_message"
        tb = tb.tb_next
    return False


def _wrap_exception(serialize: Any, wrapper: Any) -> tuple[bytes, str]:
    """Serialize the exception being handled as parsl does; return it with a one-line diagnosis."""
    etype, evalue, tb = sys.exc_info()
    assert etype is not None and evalue is not None
    diag = f"{etype.__name__}: {_safe_str(evalue)}"
    try:
        return serialize(wrapper(etype, evalue, tb)), diag
    except Exception as exc:
        # The exception or its traceback cannot be pickled: send a picklable description instead.
        substitute = RuntimeError(
            f"the task raised {diag}, which could not be serialized ({type(exc).__name__}: {_safe_str(exc)})"
        )
        return serialize(wrapper(RuntimeError, substitute, None)), diag


def _worker_main(conn: Connection, log_cap: int) -> None:
    """Body of a warm Python worker: run task buffers received on ``conn`` until told to stop.

    Receives ``(job_id, attempt, buffer)``; replies ``(job_id, status, data, log, diag, ended_at)`` where
    ``data`` is what parsl's HTEX worker would send: the serialized result, or a serialized
    ``RemoteExceptionWrapper``. ``None`` or a closed pipe ends the loop.
    """
    try:
        # Own session: terminal signals meant for the pilot do not hit tasks, and killing the
        # process group takes the task's own children along.
        os.setsid()
    except OSError:
        pass
    # multiprocessing refuses children of daemonic processes; tasks may legitimately use
    # multiprocessing, and the pilot reaps its workers itself.
    multiprocessing.current_process().daemon = False

    from parsl.app.errors import RemoteExceptionWrapper
    from parsl.executors.execute_task import execute_task
    from parsl.serialize import serialize

    execute_code = execute_task.__code__
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the pilot went away
        if message is None:
            return
        job_id, attempt, buffer = message
        os.environ["PANDAFLOW_JOB_ID"] = str(job_id)
        os.environ["PANDAFLOW_ATTEMPT"] = str(attempt)
        capture = _Capture(log_cap)
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = capture
        diag = ""
        try:
            try:
                result = execute_task(buffer)
            except BaseException:  # SystemExit from a task must not take the worker down
                unpacking = _failed_unpacking(sys.exc_info()[2], execute_code)
                status = _UNPACK_FAILED if unpacking else _RAISED
                data, diag = _wrap_exception(serialize, RemoteExceptionWrapper)
            else:
                try:
                    data = serialize(result, buffer_threshold=_RESULT_BUFFER_THRESHOLD)
                    status = _DONE
                    if isinstance(result, RemoteExceptionWrapper):
                        # parsl apps catch their own exceptions (wrap_error) and return them
                        # wrapped: that is a failed task, whatever the transport says.
                        status = _RAISED
                        kind = getattr(result.e_type, "__name__", result.e_type)
                        diag = f"{kind}: {_safe_str(result.e_value)}"
                except BaseException:
                    status = _UNSERIALIZABLE
                    data, diag = _wrap_exception(serialize, RemoteExceptionWrapper)
                    diag = f"result of type {type(result).__name__} cannot be serialized: {diag}"
                del result
        finally:
            sys.stdout, sys.stderr = saved
        del buffer, message
        try:
            conn.send((job_id, status, data, capture.getvalue(), diag, time.time()))
        except OSError:
            return  # the pilot went away
        del data, capture


# --------------------------------------------------------------------------- pilot side


class _Worker:
    """A warm Python worker process as seen from the pilot."""

    __slots__ = ("proc", "conn", "pid", "ps", "job", "doomed", "dead", "conn_open")

    def __init__(self, proc: Any, conn: Connection):
        self.proc = proc
        self.conn = conn
        self.pid: int = proc.pid
        try:
            # Kept for the worker's life: psutil refuses to signal a pid that was reused since.
            self.ps: psutil.Process | None = psutil.Process(proc.pid)
        except psutil.Error:
            self.ps = None
        self.job: _Job | None = None
        self.doomed = False  # being killed: never give it another task
        self.dead = False
        self.conn_open = True


@dataclass(slots=True, eq=False)
class _Job:
    """A running payload (internal bookkeeping)."""

    payload: Payload
    started_at: float  # time.time()
    t0: float  # time.monotonic()
    next_sample: float
    deadline: float | None
    worker: _Worker | None = None
    popen: subprocess.Popen | None = None
    ps: psutil.Process | None = None
    pidfd: int | None = None
    log_path: str = ""
    rss: float = 0.0
    pss: float = 0.0
    max_rss: float = 0.0
    max_pss: float = 0.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    n_samples: int = 0
    stride: int = 1
    kill_code: int | None = None  # set once when the pilot decides to kill it
    kill_diag: str = ""
    tail: str = ""
    tail_at: float = -1.0
    reaped: bool = False


def _mp_context() -> Any:
    # The pilot runs ZeroMQ threads: plain fork could copy a lock held by one of them. The forkserver
    # is itself started by exec, and then forks clean workers quickly with parsl preloaded.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _read_tail(path: str, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read(size)
    except OSError:
        return b""


def _read_log(path: str, cap: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - cap)
            f.seek(start)
            return _cap_log(f.read(), cap, start)
    except OSError as exc:
        return f"[pandaflow: cannot read the payload log: {exc}]\n".encode()


def _tail_text(data: bytes) -> str:
    return data[-TAIL_BYTES:].decode("utf-8", "replace")


class PayloadRunner:
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
        self._ctx = _mp_context()
        self._lock = threading.Lock()
        self._jobs: dict[int, _Job] = {}
        self._used = 0
        self._outcomes: deque[Outcome] = deque()
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._exited: deque[_Job] = deque()  # shell payloads reaped by a waiter thread (no pidfd)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, (_EV_WAKE, None))
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
                job.tail = _tail_text(_read_tail(job.log_path, TAIL_BYTES))
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

    def _new_job(self, p: Payload) -> _Job:
        t0 = time.monotonic()
        return _Job(payload=p, started_at=time.time(), t0=t0,
                    next_sample=t0 + min(FIRST_SAMPLE_AFTER, self.sample_interval),
                    deadline=t0 + p.walltime_s if p.walltime_s else None)  # fmt: skip

    def _submit_python(self, p: Payload) -> None:
        w = self._take_worker()
        job = self._new_job(p)
        job.worker = w
        with self._lock:
            self._jobs[p.job_id] = job
            self._used += p.cores
            w.job = job
        buffer = p.buffer if isinstance(p.buffer, bytes) else bytes(p.buffer)  # type: ignore[arg-type]
        try:
            w.conn.send((p.job_id, p.attempt, buffer))
        except (OSError, ValueError):
            # The worker died just now; its sentinel reports the job as WORKER_DIED.
            log.warning("worker %d gone while job %d was sent to it", w.pid, p.job_id)

    def _take_worker(self) -> _Worker:
        while self._idle:
            w = self._idle.pop()  # most recently used first: its caches are warm
            if not (w.dead or w.doomed or not w.conn_open):
                return w
        return self._spawn_worker()

    def _spawn_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        # daemon: should the pilot exit without stop(), multiprocessing terminates the workers.
        proc = self._ctx.Process(target=_worker_main, args=(child, self.log_cap), name="pandaflow-worker",
                                 daemon=True)  # fmt: skip
        proc.start()
        child.close()
        w = _Worker(proc, parent)
        self._sel.register(parent.fileno(), selectors.EVENT_READ, (_EV_RESULT, w))
        self._sel.register(proc.sentinel, selectors.EVENT_READ, (_EV_DEATH, w))
        self._workers.append(w)
        return w

    def _submit_shell(self, p: Payload) -> None:
        jobdir = os.path.join(self.workdir, "jobs", f"{p.job_id}.{p.attempt}")
        log_path = os.path.join(jobdir, "payload.log")
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (p.env or {}).items()})
        env["PANDAFLOW_JOB_ID"] = str(p.job_id)
        env["PANDAFLOW_ATTEMPT"] = str(p.attempt)
        job = self._new_job(p)  # before Popen: starting the command is part of its run time
        try:
            try:
                os.mkdir(jobdir)  # one system call on the hot path; makedirs for the first job
            except FileNotFoundError:
                os.makedirs(jobdir, exist_ok=True)
            except FileExistsError:
                pass
            with open(log_path, "wb") as logf:
                popen = subprocess.Popen(["/bin/bash", "-c", p.command or ""], cwd=jobdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            code = ErrorCode.DISK_FULL if full else ErrorCode.ENV_CHECK_FAILED
            self._finish_now(p, code, f"cannot start the command in {jobdir}: {exc.strerror or exc}")
            return
        job.popen = popen
        job.log_path = log_path
        # job.ps (psutil's handle, for signalling the tree) is made when first needed: most short
        # commands end before anything signals them, and making it reads /proc on the hot path.
        with self._lock:
            self._jobs[p.job_id] = job
            self._used += p.cores
        try:
            job.pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            job.pidfd = None
        if job.pidfd is not None:
            self._sel.register(job.pidfd, selectors.EVENT_READ, (_EV_SHELL, job))
        else:
            # No pidfd (not Linux >= 5.3): a thread blocks in waitpid and pokes the self-pipe.
            threading.Thread(target=self._reap_shell, args=(job,), name=f"pandaflow-wait-{p.job_id}",
                             daemon=True).start()  # fmt: skip

    def _reap_shell(self, job: _Job) -> None:
        assert job.popen is not None
        job.popen.wait()
        self._exited.append(job)
        self._wake()

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
            if kind == _EV_RESULT:
                if obj.conn_open:
                    self._on_result(obj)
            elif kind == _EV_DEATH:
                self._on_death(obj)
            elif kind == _EV_SHELL:
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

    def _close_conn(self, w: _Worker) -> None:
        if w.conn_open:
            w.conn_open = False
            try:
                self._sel.unregister(w.conn.fileno())
            except (KeyError, ValueError, OSError):
                pass
            w.conn.close()

    def _on_result(self, w: _Worker) -> None:
        try:
            job_id, status, data, output, diag, ended = w.conn.recv()
        except (EOFError, OSError):
            self._close_conn(w)  # the worker is gone; its sentinel reports it
            return
        with self._lock:
            job = w.job
            if job is None or job.payload.job_id != job_id:
                log.warning("worker %d returned job %s, which it was not running", w.pid, job_id)
                return
            self._release(job)
            w.job = None
            if not w.doomed:
                self._idle.append(w)
            kill_code, kill_diag = job.kill_code, job.kill_diag
        p = job.payload
        tail = _tail_text(output) if output else ""
        if kill_code is not None:  # decided before the result came in: the kill is what is reported
            outcome = Outcome(p.job_id, p.attempt, False, kill_code, kill_diag, stdout_tail=tail, log=output)
        elif status == _DONE:
            outcome = Outcome(p.job_id, p.attempt, True, 0, "", result=data, stdout_tail=tail, log=output)
        else:
            code, prefix = {
                _RAISED: (ErrorCode.PAYLOAD_EXCEPTION, "task raised "),
                _UNPACK_FAILED: (ErrorCode.BAD_PAYLOAD, "cannot unpack the task: "),
                _UNSERIALIZABLE: (ErrorCode.SERIALIZATION_ERROR, ""),
            }[status]
            outcome = Outcome(p.job_id, p.attempt, False, int(code), prefix + diag, result=data,
                              result_is_exception=True, stdout_tail=tail, log=output)  # fmt: skip
        self._complete(job, outcome, ended)

    def _on_death(self, w: _Worker) -> None:
        if w.dead:
            return
        w.dead = True
        # It may have sent a result just before it exited: that result counts.
        while w.conn_open and w.conn.poll():
            self._on_result(w)
        self._close_conn(w)
        try:
            self._sel.unregister(w.proc.sentinel)
        except (KeyError, ValueError, OSError):
            pass
        w.proc.join(timeout=1.0)
        exitcode = w.proc.exitcode
        self._signal_group(w.pid, signal.SIGKILL, None)  # stray children of the dead worker
        with self._lock:
            self._workers.remove(w)
            if w in self._idle:
                self._idle.remove(w)
            job, w.job = w.job, None
            if job is not None:
                self._release(job)
        if job is not None:
            p = job.payload
            if job.kill_code is not None:
                outcome = Outcome(p.job_id, p.attempt, False, job.kill_code, job.kill_diag)
            else:
                diag = f"worker process {w.pid} died with {_describe_exit(exitcode)} while running the task"
                outcome = Outcome(p.job_id, p.attempt, False, int(ErrorCode.WORKER_DIED), diag)
                log.warning("job %d: %s", p.job_id, diag)
            self._complete(job, outcome, time.time())
        try:
            w.proc.close()
        except ValueError:
            pass  # still not reaped (join timed out); the forkserver will reap it
        if not self._stopping and len(self._workers) < self.python_workers:
            self._idle.append(self._spawn_worker())  # keep the warm pool at strength

    def _on_shell_exit(self, job: _Job) -> None:
        if job.reaped:
            return
        job.reaped = True
        if job.pidfd is not None:
            try:
                self._sel.unregister(job.pidfd)
            except (KeyError, ValueError):
                pass
            os.close(job.pidfd)
            job.pidfd = None
        assert job.popen is not None
        rc = job.popen.wait()
        ended = time.time()
        # Background processes the command left in its session would hold on to the slot's cores.
        self._signal_group(job.popen.pid, signal.SIGKILL, None)
        data = _read_log(job.log_path, self.log_cap)
        p = job.payload
        with self._lock:
            self._release(job)
            kill_code, kill_diag = job.kill_code, job.kill_diag
        if kill_code is not None:
            code, diag = kill_code, kill_diag
        elif rc == 0:
            code, diag = 0, ""
        else:
            code, diag = int(ErrorCode.PAYLOAD_NONZERO_EXIT), f"command failed with {_describe_exit(rc)}"
            if self._disk_nearly_full():
                code, diag = int(ErrorCode.DISK_FULL), f"{diag}; no space left in {self.workdir}"
        outcome = Outcome(p.job_id, p.attempt, code == 0, code, diag, exit_code=rc,
                          stdout_tail=_tail_text(data), log=data)  # fmt: skip
        self._complete(job, outcome, ended)

    def _disk_nearly_full(self) -> bool:
        try:
            return shutil.disk_usage(self.workdir).free < _MB
        except OSError:
            return False

    def _release(self, job: _Job) -> None:
        """Free the job's slots (lock held)."""
        if self._jobs.get(job.payload.job_id) is job:
            del self._jobs[job.payload.job_id]
            self._used -= job.payload.cores

    def _complete(self, job: _Job, outcome: Outcome, ended: float) -> None:
        outcome.started_at = job.started_at
        outcome.ended_at = ended
        outcome.max_rss_mb = job.max_rss
        outcome.max_pss_mb = job.max_pss
        outcome.memory_samples = job.samples
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

    # ------------------------------------------------------------------ killing

    def _mark_killed(self, job: _Job, code: int, diag: str) -> None:
        """Record the decision to kill ``job`` (lock held); the first decision wins."""
        if job.kill_code is None:
            job.kill_code = code
            job.kill_diag = diag
        if job.worker is not None:
            job.worker.doomed = True

    def _signal_tree(self, job: _Job, sig: int) -> None:
        if job.worker is not None:
            self._signal_worker(job.worker, sig)
        elif job.popen is not None and not job.reaped:
            if job.ps is None:
                try:  # safe before reaping: the unreaped pid cannot belong to another process
                    job.ps = psutil.Process(job.popen.pid)
                except psutil.Error:
                    pass
            self._signal_processes(job.ps, job.popen.pid, sig)

    def _signal_worker(self, w: _Worker, sig: int) -> None:
        if not w.dead:
            self._signal_processes(w.ps, w.pid, sig)

    def _signal_processes(self, root: psutil.Process | None, pgid: int, sig: int) -> None:
        """Signal ``root``, its process group and all its descendants."""
        descendants: list[psutil.Process] = []
        try:
            if root is not None and root.is_running():
                descendants = root.children(recursive=True)
        except _GONE:
            pass
        self._signal_group(pgid, sig, root)
        for proc in [root, *descendants] if root is not None else descendants:
            try:
                proc.send_signal(sig)
            except _GONE:
                pass

    @staticmethod
    def _signal_group(pgid: int, sig: int, root: psutil.Process | None) -> None:
        if pgid <= 1 or pgid == os.getpgrp():
            return  # never our own group
        if root is not None and not root.is_running():
            return  # the leader's pid may have been reused: leave the group alone
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

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

    def _record_sample(self, job: _Job, point: tuple[float, float, float], now: float) -> None:
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
