"""Shell payloads: a command line run by ``/bin/bash -c`` in its own session and job directory
(``jobs/<job_id>.<attempt>/``), its output in ``payload.log`` there (:class:`ShellPayloads`)."""

from __future__ import annotations

import errno
import logging
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections import deque

from pandaflow.errorcodes import ErrorCode
from pandaflow.pilot.logcapture import read_log, tail_text
from pandaflow.pilot.payload import EV_SHELL, Outcome, Payload, RunningPayload
from pandaflow.pilot.processes import describe_exit, signal_group

log = logging.getLogger(__name__)

_MB = 1024 * 1024


class ShellPayloads:
    """The runner's shell payloads (a part of :class:`~pandaflow.pilot.runner.PayloadRunner`,
    whose state it shares): start a command, and build its outcome once it exited."""

    workdir: str
    log_cap: int
    _lock: threading.Lock
    _sel: selectors.BaseSelector
    _jobs: dict[int, RunningPayload]
    _used: int
    _exited: deque[RunningPayload]

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
            self._sel.register(job.pidfd, selectors.EVENT_READ, (EV_SHELL, job))
        else:
            # No pidfd (not Linux >= 5.3): a thread blocks in waitpid and pokes the self-pipe.
            threading.Thread(target=self._reap_shell, args=(job,), name=f"pandaflow-wait-{p.job_id}",
                             daemon=True).start()  # fmt: skip

    def _reap_shell(self, job: RunningPayload) -> None:
        assert job.popen is not None
        job.popen.wait()
        self._exited.append(job)
        self._wake()

    def _on_shell_exit(self, job: RunningPayload) -> None:
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
        signal_group(job.popen.pid, signal.SIGKILL, None)
        data = read_log(job.log_path, self.log_cap)
        p = job.payload
        with self._lock:
            self._release(job)
            kill_code, kill_diag = job.kill_code, job.kill_diag
        if kill_code is not None:
            code, diag = kill_code, kill_diag
        elif rc == 0:
            code, diag = 0, ""
        else:
            code, diag = int(ErrorCode.PAYLOAD_NONZERO_EXIT), f"command failed with {describe_exit(rc)}"
            if self._disk_nearly_full():
                code, diag = int(ErrorCode.DISK_FULL), f"{diag}; no space left in {self.workdir}"
        outcome = Outcome(p.job_id, p.attempt, code == 0, code, diag, exit_code=rc,
                          stdout_tail=tail_text(data), log=data)  # fmt: skip
        self._complete(job, outcome, ended)

    def _disk_nearly_full(self) -> bool:
        try:
            return shutil.disk_usage(self.workdir).free < _MB
        except OSError:
            return False
