"""A pandaflow server and pilot on this machine for ``bps submit`` when no server is configured.

The server runs detached (its own session, stdin closed, output to a log under
``$PANDAFLOW_HOME``) with its default SQLite database, so it outlives the ``bps submit`` that
started it and a later ``bps report --id ID`` from another shell finds it through
``$PANDAFLOW_HOME/server.json``. One local pilot, also detached, runs the jobs; it exits after
``idle_timeout`` seconds without work and the next submission starts another. A lock file
(``bps-local.lock``, ``fcntl.flock``) keeps two concurrent submissions from starting two
servers; ``bps-local.json`` remembers the pids of what was started.

A reused pilot keeps the environment of the submission that started it, so :func:`fit_run`
gives each job of a local run what it needs from the submitting shell: its ``PATH`` (which
``pipetask`` and ``butler``) and the variables its command line names (bps ``<ENV:NAME>``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from pandaflow import config as pf_config
from pandaflow.client import Client, ClientError

_LOG = logging.getLogger(__name__)
START_TIMEOUT = 60.0  # seconds the server gets to answer (first start runs the migrations)
PILOT_IDLE_TIMEOUT = 600.0


class LocalServerError(RuntimeError):
    """The local server could not be started; the message points at its log."""


@dataclass(frozen=True, slots=True)
class LocalServer:
    """The server under ``home``; ``managed`` when bps started it (then the local pilot is ours too)."""

    url: str
    token: str | None
    pilot_pid: int | None
    home: Path
    managed: bool = True


def _state_path(home: Path) -> Path:
    return home / "bps-local.json"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "bps-local.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def answers(url: str, token: str | None, timeout: float = 5.0) -> bool:
    """True if a pandaflow server at ``url`` answers ``GET /info`` with this token."""
    try:
        Client(url, token, timeout=timeout).info()
        return True
    except ClientError:
        return False


def running_server(home: Path | None = None) -> tuple[str, str | None] | None:
    """``(url, token)`` of the server that ``home/server.json`` names, if it answers."""
    info = pf_config.server_info(home)
    if info is None:
        return None
    url = info.get("url")
    pid = info.get("pid")
    if not url or (isinstance(pid, int) and not psutil.pid_exists(pid)):
        return None
    token = pf_config.load_token()
    return (url, token) if answers(url, token) else None


def _alive(pid: int | None, marker: str) -> bool:
    """The process exists and is still ours (its command line names ``marker``), not a reused pid."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and marker in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def search_path(environ: Mapping[str, str]) -> str:
    """``environ``'s PATH, ending with this Python's scripts directory if it lacks it: the
    ``pipetask`` and ``butler`` installed beside the running bps, when ``bps`` was started by its
    full path from a shell that never activated the environment."""
    scripts = sysconfig.get_path("scripts") or str(Path(sys.executable).parent)
    path = environ.get("PATH") or os.defpath
    return path if scripts in path.split(os.pathsep) else f"{path}{os.pathsep}{scripts}"


def _detached(cmd: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
            start_new_session=True, close_fds=True, env=env,
        )  # fmt: skip
    return proc.pid


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def _start_server(home: Path, timeout: float) -> tuple[str, str | None, int]:
    info_file = home / "server.json"
    info_file.unlink(missing_ok=True)
    log_path = home / "bps-server.log"
    # --port 0 / --zmq-port 0: any free ports, published in server.json (8800 may be taken).
    cmd = [sys.executable, "-m", "pandaflow.server", "--port", "0", "--zmq-port", "0",
           "--info-file", str(info_file)]  # fmt: skip
    pid = _detached(cmd, log_path, home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            info = None
        if info and info.get("pid") == pid and info.get("url"):
            token = pf_config.load_token()
            if answers(info["url"], token):
                return info["url"], token, pid
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            raise LocalServerError(
                f"the local pandaflow server exited while starting; its log {log_path} ends with:\n"
                + _tail(log_path)
            )
        time.sleep(0.1)
    raise LocalServerError(
        f"the local pandaflow server (pid {pid}) did not answer within {timeout:g} s; see {log_path}"
    )


def _start_pilot(home: Path, url: str, cores: int, idle_timeout: float) -> int:
    workdir = home / "bps-pilot"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pandaflow.pilot", "--server", url, "--queue", "local",
           "--cores", str(cores), "--workdir", str(workdir), "--idle-timeout", str(idle_timeout),
           "--name", f"bps-local-{os.getpid()}"]  # fmt: skip
    token_file = home / "token"
    if not os.environ.get("PANDAFLOW_TOKEN") and token_file.exists():
        cmd += ["--token-file", str(token_file)]
    env = {**os.environ, "PATH": search_path(os.environ)}
    return _detached(cmd, home / "bps-pilot.log", workdir, env=env)


def local_cores() -> int:
    """Worker slots of the local pilot: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ensure_local(
    *, with_pilot: bool = True, cores: int | None = None, idle_timeout: float = PILOT_IDLE_TIMEOUT,
    timeout: float = START_TIMEOUT,
) -> LocalServer:  # fmt: skip
    """Reuse the server under ``$PANDAFLOW_HOME`` if it answers, else start one; same for the pilot.

    A server that someone started by hand (``pandaflow server``, found through ``server.json``
    but not recorded in ``bps-local.json``) is used as it is: its pilots are its owner's
    business, so none is started and the result is not ``managed``.

    Returns once the server answers. Safe to call from concurrent processes (file lock).
    """
    home = pf_config.home()
    with _locked(home):
        try:
            state = json.loads(_state_path(home).read_text())
        except (OSError, ValueError):
            state = {}
        found = running_server(home)
        if found is None:
            url, token, state["server_pid"] = _start_server(home, timeout)
            managed = True
        else:
            url, token = found
            managed = (pf_config.server_info() or {}).get("pid") == state.get("server_pid")
        pilot_pid = state.get("pilot_pid") if managed and with_pilot else None
        pilot_gone = state.get("pilot_url") != url or not _alive(pilot_pid, "pandaflow.pilot")
        if managed and with_pilot and pilot_gone:
            pilot_pid = _start_pilot(home, url, cores or local_cores(), idle_timeout)
            state.update(pilot_pid=pilot_pid, pilot_url=url)
        _state_path(home).write_text(json.dumps(state))
    return LocalServer(url=url, token=token, pilot_pid=pilot_pid, home=home, managed=managed)


_SHELL_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EXPORT = re.compile(r"(?:^|; )export ([A-Za-z_][A-Za-z0-9_]*)=")


def fit_run(body: dict[str, Any], cores: int, environ: Mapping[str, str]) -> dict[str, Any]:
    """A submission body adapted to the local pilot (a new body; ``body`` is left as it is).

    - jobs never ask more cores than the pilot has: bps asks 16 for ``finalJob``, which a
      laptop's pilot could never take;
    - every job runs with the submitting shell's ``PATH`` (see :func:`search_path`) and its
      values of the variables the command line names (``${NAME}``, from bps ``<ENV:NAME>``),
      unless the job's own ``env`` sets them: a pilot reused from an earlier submission
      still has that submission's environment.
    """
    cores = max(1, int(cores))
    path = search_path(environ)
    unset: dict[str, Counter[str]] = {}
    jobs = []
    for job in body["jobs"]:
        env = {"PATH": path, **(job.get("env") or {})}
        command = job.get("command") or ""
        exported = set(_EXPORT.findall(command))  # pandaflow.bps.workflow exports some variables
        for name in _SHELL_VARIABLE.findall(command):
            if name in env or name in exported:
                continue
            if name in environ:
                env[name] = environ[name]
            else:
                unset.setdefault(name, Counter())[job.get("task") or job["name"]] += 1
        jobs.append({**job, "cores": min(job.get("cores") or 1, cores), "env": env})
    for name, labels in unset.items():
        _LOG.warning(
            "jobs (%s) use ${%s}, which is not set in this shell: they will see the local pilot's "
            "value, if any; export %s before bps submit, or set it under 'environment' in the submit yaml",
            ", ".join(f"{n} of {label}" for label, n in labels.items()), name, name,
        )  # fmt: skip
    return {**body, "jobs": jobs}
