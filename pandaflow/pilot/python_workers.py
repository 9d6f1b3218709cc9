"""Warm Python worker processes: the worker's own loop (run parsl task buffers as parsl's HTEX
worker does), and the runner's side of them (:class:`PythonWorkers`: start, hand out, collect).

Workers are started once, through a forkserver that has parsl preloaded, and reused; a task
costs two pipe messages, not a process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import selectors
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import psutil

from pandaflow.errorcodes import ErrorCode
from pandaflow.pilot.logcapture import Capture, tail_text
from pandaflow.pilot.payload import EV_DEATH, EV_RESULT, Outcome, Payload, RunningPayload
from pandaflow.pilot.processes import describe_exit, signal_group

log = logging.getLogger(__name__)

_RESULT_BUFFER_THRESHOLD = 1_000_000  # what parsl's HTEX worker passes to serialize()

# What the forkserver imports once, so that every (re)started worker has parsl ready in milliseconds.
_WORKER_PRELOAD = ["parsl.serialize", "parsl.executors.execute_task", "parsl.app.errors", __name__]

# Worker reply status.
_DONE, _RAISED, _UNPACK_FAILED, _UNSERIALIZABLE = range(4)


# --------------------------------------------------------------------------- worker process side


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
        capture = Capture(log_cap)
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


class Worker:
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
        self.job: RunningPayload | None = None
        self.doomed = False  # being killed: never give it another task
        self.dead = False
        self.conn_open = True


def mp_context() -> Any:
    """The multiprocessing context workers are started from: a forkserver with parsl preloaded."""
    # The pilot runs ZeroMQ threads: plain fork could copy a lock held by one of them. The forkserver
    # is itself started by exec, and then forks clean workers quickly with parsl preloaded.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


class PythonWorkers:
    """The runner's warm Python workers (a part of :class:`~pandaflow.pilot.runner.PayloadRunner`,
    whose state it shares): start them, hand each a task, read its result or notice its death.
    Runs on the pilot thread only."""

    python_workers: int
    log_cap: int
    _ctx: Any
    _lock: threading.Lock
    _sel: selectors.BaseSelector
    _jobs: dict[int, RunningPayload]
    _used: int
    _workers: list[Worker]
    _idle: list[Worker]
    _stopping: bool

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

    def _take_worker(self) -> Worker:
        while self._idle:
            w = self._idle.pop()  # most recently used first: its caches are warm
            if not (w.dead or w.doomed or not w.conn_open):
                return w
        return self._spawn_worker()

    def _spawn_worker(self) -> Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        # daemon: should the pilot exit without stop(), multiprocessing terminates the workers.
        proc = self._ctx.Process(target=_worker_main, args=(child, self.log_cap), name="pandaflow-worker",
                                 daemon=True)  # fmt: skip
        proc.start()
        child.close()
        w = Worker(proc, parent)
        self._sel.register(parent.fileno(), selectors.EVENT_READ, (EV_RESULT, w))
        self._sel.register(proc.sentinel, selectors.EVENT_READ, (EV_DEATH, w))
        self._workers.append(w)
        return w

    def _close_conn(self, w: Worker) -> None:
        if w.conn_open:
            w.conn_open = False
            try:
                self._sel.unregister(w.conn.fileno())
            except (KeyError, ValueError, OSError):
                pass
            w.conn.close()

    def _on_result(self, w: Worker) -> None:
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
        tail = tail_text(output) if output else ""
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
                              is_exception=True, stdout_tail=tail, log=output)  # fmt: skip
        self._complete(job, outcome, ended)

    def _on_death(self, w: Worker) -> None:
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
        signal_group(w.pid, signal.SIGKILL, None)  # stray children of the dead worker
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
                diag = f"worker process {w.pid} died with {describe_exit(exitcode)} while running the task"
                outcome = Outcome(p.job_id, p.attempt, False, int(ErrorCode.WORKER_DIED), diag)
                log.warning("job %d: %s", p.job_id, diag)
            self._complete(job, outcome, time.time())
        try:
            w.proc.close()
        except ValueError:
            pass  # still not reaped (join timed out); the forkserver will reap it
        if not self._stopping and len(self._workers) < self.python_workers:
            self._idle.append(self._spawn_worker())  # keep the warm pool at strength
