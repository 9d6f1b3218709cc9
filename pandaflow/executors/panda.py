"""PandaExecutor: a parsl executor whose every task goes through a pandaflow job server.

``PandaExecutor(label="panda")`` with nothing else starts an embedded server (SQLite under
parsl's run_dir) and local pilots, and stops them on shutdown. With ``server_url=`` and
``token=`` it attaches to a running server whose pilots come from elsewhere; ``provider=``
launches pilots through any parsl ``ExecutionProvider``.

Tasks are serialized with parsl's own ``pack_apply_message`` and run by pilots with parsl's
``execute_task``, so whatever parsl can run, this runs. Submissions travel in batches over
ZeroMQ; the server acknowledges a batch only once it is committed, and results are kept in
the database until delivered, so a server restart loses nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

import zmq
from parsl.app.errors import RemoteExceptionWrapper
from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification
from parsl.serialize import deserialize, pack_apply_message
from parsl.utils import RepresentationMixin

from pandaflow import config as pf_config
from pandaflow import protocol
from pandaflow import spec as job_spec
from pandaflow.executors import keys as task_keys
from pandaflow.executors.embedded import Processes

log = logging.getLogger(__name__)

RESOURCE_KEYS = job_spec.RESOURCE_KEYS
_PING_EVERY = 2.0
_RESEND_AFTER = 10.0
_SYNC_EVERY = 10.0
_WINDOW = 2  # submissions in flight before new jobs wait to be batched
_MAX_BATCH = 2000
GRACE = 120.0  # seconds the server keeps an unnamed run's jobs after its executor went silent
RUN_GRACE = 3600.0  # the same for a named run (a rerun re-attaches within it)


class TaskFailed(Exception):
    """A task failed on the pandaflow side (killed for memory or time, lost pilot, ...)."""

    def __init__(self, uid: str, status: str, error_code: int, diag: str, job_id: int | None = None):
        name = f"job {job_id}" if job_id is not None else f"task {uid}"
        hint = f" (see `pandaflow job {job_id}`)" if job_id is not None else ""
        super().__init__(f"pandaflow {name} {status} with error {error_code}: {diag}{hint}")
        self.uid, self.status, self.error_code, self.diag, self.job_id = uid, status, error_code, diag, job_id


class SubmissionRefused(TaskFailed):
    """The server refused the task at submission (e.g. no queue can hold it)."""


def _check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Translate a parsl resource_specification into job fields (:func:`pandaflow.spec.resource_fields`)."""
    try:
        return job_spec.resource_fields(spec)
    except job_spec.ResourceError as exc:
        raise InvalidResourceSpecification(exc.keys, str(exc)) from None


class PandaExecutor(ParslExecutor, RepresentationMixin):
    """Run parsl apps as durable pandaflow jobs.

    Each app call becomes a job of the server: brokered to a queue that fits its
    ``resource_specification``, retried when infrastructure fails it, visible afterwards
    (``pandaflow jobs``, ``pandaflow job ID``).

    Args:
        label: the executor's label in the parsl config.
        server_url: REST URL of a running server; ``None`` starts an embedded one (SQLite under
            parsl's run directory) with local pilots, stopped on shutdown.
        token: the server's token (attach mode; default ``$PANDAFLOW_TOKEN``, else
            ``$PANDAFLOW_HOME/token``).
        provider: a parsl ``ExecutionProvider`` that launches pilots (``init_blocks`` of them)
            instead of local pilot processes.
        workers: worker slots of the local pilot (embedded mode; default: the CPU count).
        pilots: how many local pilots to start (embedded mode).
        queue: the queue the pilots serve, and the tasks' default queue.
        workflow: name of the workflow the tasks are recorded under (default: ``parsl <run_id>``).
        max_attempts: attempts a task gets when infrastructure fails it (lost pilot, killed
            worker); a task's own ``max_attempts`` wins.
        db_url: database of the embedded server (default: SQLite under the run directory).
        heartbeat_interval: seconds between pilot heartbeats (embedded server).
        storage_access: parsl data staging providers, as for any parsl executor.
        working_dir: parsl's working directory of the executor, as for any parsl executor.
        memory_escalation: a task killed for exceeding its memory is retried asking more (its
            queue's ``memory_multiplier``, capped); ``False`` keeps every task's request (a task's
            own ``resource_specification={"memory_multiplier": ...}`` still wins).
        run_name: makes the run resumable: a rerun of the script with the same ``run_name`` gets
            the results of the tasks that finished back from the server instead of running them
            again, waits for those still running, and runs again those that failed. Tasks are
            matched by key (function, source and arguments, see :mod:`pandaflow.executors.keys`,
            or a task's own ``resource_specification={"key": ...}``). The embedded server keeps
            its database in ``$PANDAFLOW_HOME/runs/<run_name>/``, where the rerun finds it.
        orphan_grace: seconds the server keeps this run's unfinished jobs once the executor is no
            longer heard (its driver died), for a restart to re-attach; then they are cancelled.
            Default 120 s, or 3600 s with a ``run_name``; 0 keeps them forever.

    Every task may also name, in its ``parsl_resource_specification``, the ``workflow`` and the
    ``task`` (label) it is recorded under.
    """

    def __init__(
        self,
        label: str = "panda",
        server_url: str | None = None,
        token: str | None = None,
        provider: Any = None,
        workers: int | None = None,
        pilots: int = 1,
        queue: str | None = None,
        workflow: str | None = None,
        max_attempts: int = 3,
        db_url: str | None = None,
        heartbeat_interval: float = 2.0,
        storage_access: list[Any] | None = None,
        working_dir: str | None = None,
        memory_escalation: bool = True,
        run_name: str | None = None,
        orphan_grace: float | None = None,
    ):
        super().__init__()
        self.label = label
        self.server_url = server_url
        self.token = token
        self.provider = provider
        self.workers = workers or os.cpu_count() or 1
        self.pilots = pilots
        self.queue = queue
        self.workflow = workflow
        self.max_attempts = max_attempts
        self.db_url = db_url
        self.heartbeat_interval = heartbeat_interval
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.memory_escalation = memory_escalation
        self.run_name = task_keys.check_run_name(run_name) if run_name is not None else None
        if orphan_grace is not None and not orphan_grace >= 0:
            raise ValueError(f"orphan_grace={orphan_grace!r}: give seconds >= 0 (0: keep the jobs forever)")
        self.orphan_grace = orphan_grace
        self.client_id = task_keys.client_id(self.run_name) if self.run_name else uuid.uuid4().hex
        self._calls: dict[str, int] = {}  # call key -> calls so far in this run (named runs)
        self._lockf: Any = None
        self._counter = 0
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}
        self._unacked: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self._pending: list[dict[str, Any]] = []
        self._heard = False  # the server has answered our main socket at least once
        self._batch_seq = 0
        self._epoch: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local: Processes | None = None
        self.zmq_endpoint: str | None = None
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the embedded server and pilots, or attach to ``server_url`` (called by parsl)."""
        self._embedded = self.server_url is None
        if self.run_name and self._embedded:
            self._home = str(pf_config.home() / "runs" / self.run_name)
            os.makedirs(self._home, exist_ok=True)
            self._lock_run()
        else:
            self._home = os.path.join(self.run_dir, self.label)
            os.makedirs(self._home, exist_ok=True)
        self._local = Processes(self._home, self.label, self.client_id)
        self._local.queue, self._local.workers = self.queue or "local", self.workers
        if self._embedded:
            if self.queue and self.queue != "local":
                raise ValueError(
                    "the embedded server has one queue, 'local'; give server_url= to use other queues"
                )
            self.server_url, self.zmq_endpoint, self.db_url = self._local.start_server(
                self.db_url, self.heartbeat_interval
            )
            self.token = self._local.token
        else:
            self.token = pf_config.load_token(self.token)
            if not self.token:
                raise ValueError("PandaExecutor(server_url=...) needs token= (or $PANDAFLOW_TOKEN)")
            from pandaflow.client import discover

            self.zmq_endpoint = discover(self.server_url, self.token)
            self._local.token, self._local.zmq_endpoint = self.token, self.zmq_endpoint
        self.workflow = self.workflow or self.run_name or f"parsl {self.run_id or self.client_id[:8]}"
        self._grace = (
            self.orphan_grace if self.orphan_grace is not None else (RUN_GRACE if self.run_name else GRACE)
        )
        self._ctx = zmq.Context.instance()
        self._owner = os.environ.get("USER", "")
        self._tx_lock = threading.Lock()
        self._tx = self._ctx.socket(zmq.DEALER)
        self._tx.setsockopt(zmq.ROUTING_ID, f"{self.client_id}.tx".encode())
        self._tx.setsockopt(zmq.LINGER, 0)
        self._tx.setsockopt(zmq.SNDHWM, 0)
        self._tx.setsockopt(zmq.RECONNECT_IVL, 20)
        self._tx.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._tx.connect(self.zmq_endpoint)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._thread = threading.Thread(target=self._io_loop, name=f"pandaflow-{self.label}", daemon=True)
        self._thread.start()
        if self.provider is not None:
            self._local.start_provider_pilots(self.provider, self.server_url)
        elif self._embedded:
            for i in range(self.pilots):
                self._local.start_local_pilot(f"pilot{i}")
        self._started = True

    def shutdown(self) -> None:
        """Stop talking to the server, stop what :meth:`start` started, and fail the futures of tasks
        that have not finished (called by parsl)."""
        self._stop.set()
        if self._thread is not None:
            self._wake()
            self._thread.join(10)
            self._tx.close(0)
        if self._local is not None:
            self._local.stop()
        for fut in list(self._futures.values()):
            if not fut.done():
                fut.set_exception(TaskFailed("?", "lost", 0, "executor shut down before the task finished"))
        if self._lockf is not None:
            self._lockf.close()
            self._lockf = None
        super().shutdown()

    def _lock_run(self) -> None:
        """One driver per named run on an embedded server: a second one would share its database."""
        import fcntl

        self._lockf = open(os.path.join(self._home, "driver.lock"), "a+")
        try:
            fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockf.seek(0)
            other = self._lockf.read().strip() or "?"
            self._lockf.close()
            self._lockf = None
            raise RuntimeError(
                f"run {self.run_name!r} is already being driven by process {other} (lock "
                f"{self._home}/driver.lock): stop that driver, or give this one another run_name"
            ) from None
        self._lockf.seek(0)
        self._lockf.truncate()
        self._lockf.write(str(os.getpid()))
        self._lockf.flush()

    # ---------------------------------------------------------------- submission
    def submit(self, func: Any, resource_specification: dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Send ``func(*args, **kwargs)`` to the server as a python job; the future resolves to its
        result, or raises its exception (or :class:`TaskFailed`).

        Raises:
            InvalidResourceSpecification: a ``resource_specification`` key that is unknown, or a
                value of the wrong type or range (the message names the key).
        """
        job = _check_spec(resource_specification)
        workflow = job.pop("workflow", None) or self.workflow or "default"
        key = job.pop("key", None)
        buffer = pack_apply_message(func, args, kwargs, buffer_threshold=1 << 20)
        with self._lock:
            self._counter += 1
            task_id = self._counter
            if self.run_name:
                key = key or task_keys.call_key(func, args, kwargs) or f"n{task_id}"
                self._calls[key] = seen = self._calls.get(key, 0) + 1
                key = key if seen == 1 else f"{key}.{seen}"
        uid = f"{self.client_id}-{key}" if key else f"{self.client_id}-{task_id}"
        fname = getattr(func, "__name__", "task")
        job.update(uid=uid, kind="python", buffer=buffer, name=f"{fname}-{task_id}")
        job.setdefault("task", fname)
        job["workflow"] = workflow
        job.setdefault("max_attempts", self.max_attempts)
        if not self.memory_escalation:
            job.setdefault("memory_multiplier", 1.0)
        if self.queue and "queue" not in job:
            job["queue"] = self.queue
        fut: Future = Future()
        fut.parsl_executor_task_id = task_id  # type: ignore[attr-defined]
        if uid in self._futures:
            raise ValueError(f"two tasks of one run with the key {key!r}: give each its own key")
        self._futures[uid] = fut
        # Adaptive batching: with few submissions in flight the job leaves at once, from the
        # submitting thread on a socket of its own (no hop through the I/O thread); in a burst
        # jobs gather while the window is full and leave together when the server acknowledges.
        with self._tx_lock:
            self._pending.append(job)
            # Until the server has heard the main socket (first pong), its acknowledgements would
            # be dropped; jobs wait and leave when the pong arrives.
            if self._heard and len(self._unacked) < _WINDOW:
                self._send_pending()
        return fut

    def _send_pending(self) -> None:
        """Send the gathered jobs as one submission per workflow (the caller holds ``_tx_lock``)."""
        while self._pending:
            jobs, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            by_workflow: dict[str, list[dict[str, Any]]] = {}
            for job in jobs:
                by_workflow.setdefault(job["workflow"], []).append(job)
            for group in by_workflow.values():
                self._batch_seq += 1
                self._unacked[self._batch_seq] = (time.time(), group)
                # A named run's first send may hold tasks a previous run of it stored: re-attach.
                message = self._submit_message(self._batch_seq, group, fresh=not self.run_name)
                message.attach = bool(self.run_name)
                self._tx.send(protocol.encode(message))

    def _submit_message(self, seq: int, jobs: list[dict[str, Any]], fresh: bool) -> protocol.Submit:
        return protocol.Submit(
            tok=self.token or "",
            client=self.client_id,
            batch=seq,
            workflow=jobs[0]["workflow"],
            owner=self._owner,
            jobs=[{k: v for k, v in job.items() if k != "workflow"} for job in jobs],
            fresh=fresh,
        )

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    @property
    def outstanding(self) -> int:
        return len(self._futures)

    # ---------------------------------------------------------------- I/O thread
    def _io_loop(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.client_id.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 20)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(self.zmq_endpoint)
        self._sock = sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._send(protocol.Ping())  # introduces the main socket: submissions wait for the answer
        next_ping = time.time() + _PING_EVERY
        next_sync = time.time() + _SYNC_EVERY
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(500))
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                self._wake_pending = False
                if sock in events:
                    self._receive()
                now = time.time()
                if now >= next_ping:
                    self._send(protocol.Ping())
                    self._supervise()
                    next_ping = now + _PING_EVERY
                if now >= next_sync:
                    self._resend(now - _RESEND_AFTER)
                    self._sync()
                    next_sync = now + _SYNC_EVERY
        except Exception:
            log.exception("PandaExecutor I/O thread failed")
            raise
        finally:
            sock.close(0)

    def _send(self, message: protocol.Ping | protocol.Sync) -> None:
        message.tok = self.token or ""
        message.client = self.client_id
        if isinstance(message, protocol.Ping):
            message.run, message.grace = self.run_name or "", self._grace
        self._sock.send(protocol.encode(message))

    def _resend(self, before: float) -> None:
        """Send again the submissions the server has not acknowledged since ``before``."""
        with self._tx_lock:
            stale = [(seq, jobs) for seq, (sent, jobs) in self._unacked.items() if sent <= before]
            for seq, jobs in stale:
                self._unacked[seq] = (time.time(), jobs)
                self._tx.send(protocol.encode(self._submit_message(seq, jobs, fresh=False)))

    def _sync(self) -> None:
        with self._tx_lock:
            pending_uids = {j["uid"] for _, jobs in self._unacked.values() for j in jobs}
            pending_uids.update(j["uid"] for j in self._pending)
        uids = [u for u in list(self._futures) if u not in pending_uids]
        for i in range(0, len(uids), 5000):
            self._send(protocol.Sync(uids=uids[i : i + 5000]))

    def _receive(self) -> None:
        while True:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = protocol.to_executor(frame)
            except protocol.ProtocolError as exc:
                log.error("ignored a message from the pandaflow server: %s", exc)
                continue
            match message:
                case protocol.Results(results=results):
                    self._resolve(results)
                case protocol.Submitted():
                    self._submitted(message)
                case protocol.Pong(epoch=epoch) | protocol.Synced(epoch=epoch):
                    self._heard_from(epoch)
                case protocol.Error(message=text):
                    log.error("pandaflow server: %s", text)

    def _submitted(self, reply: protocol.Submitted) -> None:
        with self._tx_lock:
            entry = self._unacked.pop(reply.batch, None)
            if self._pending and len(self._unacked) < _WINDOW:
                self._send_pending()
        if entry is None:
            return
        if reply.error:
            for job in entry[1]:
                self._fail(job["uid"], SubmissionRefused(job["uid"], "refused", 0, reply.error))
        for uid, why in reply.rejected.items():
            self._fail(uid, SubmissionRefused(uid, "refused", 0, why))

    def _heard_from(self, epoch: str) -> None:
        if not self._heard:
            with self._tx_lock:
                self._heard = True
                if len(self._unacked) < _WINDOW:
                    self._send_pending()
        if self._epoch is not None and epoch != self._epoch:
            log.warning("pandaflow server restarted: re-sending unacknowledged work and re-syncing")
            self._epoch = epoch
            self._resend(float("inf"))
            self._sync()
        self._epoch = epoch

    def _fail(self, uid: str, exc: BaseException) -> None:
        fut = self._futures.pop(uid, None)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _resolve(self, results: list[protocol.Result]) -> None:
        for r in results:
            fut = self._futures.pop(r.uid, None)
            if fut is None or fut.done():
                continue
            try:
                if r.status == "finished":
                    fut.set_result(deserialize(r.result))
                elif r.result is not None and r.is_exception:
                    wrapped = deserialize(r.result)
                    if isinstance(wrapped, RemoteExceptionWrapper):
                        try:
                            wrapped.reraise()
                        except BaseException as e:  # the app's own exception, re-raised with its traceback
                            fut.set_exception(e)
                    else:
                        fut.set_exception(
                            wrapped
                            if isinstance(wrapped, BaseException)
                            else TaskFailed(r.uid, r.status, r.error_code, repr(wrapped))
                        )
                else:
                    fut.set_exception(TaskFailed(r.uid, r.status, r.error_code, r.error_diag, r.job_id))
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)

    def _supervise(self) -> None:
        """Restart embedded processes that died while the executor runs (nothing is lost:
        the database holds every task and the watchdog retries a dead pilot's jobs)."""
        if self._local is not None and not self._stop.is_set():
            self._local.supervise()
