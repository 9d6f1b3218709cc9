"""Real processes: a job server and pilots run as subprocesses (``python -m pandaflow.server`` /
``python -m pandaflow.pilot``), waiting for processes to be gone, and :class:`ProcessTag`, which
finds (and at teardown kills) every process a test started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import requests

from support import TESTS
from support.ports import free_port

START_TIMEOUT = 60.0  # seconds a server gets to answer GET /api/v1/info (generous: 2 cores, CI)


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def gone(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until each process has exited (a zombie counts: it holds nothing); return those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for proc in procs:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
            except psutil.Error:
                pass
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group the process leads (it was started with start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ServerProcess:
    """``python -m pandaflow.server`` on fixed ports and a given database, as a subprocess.

    :meth:`start` returns once ``GET /api/v1/info`` answers; :meth:`kill9` and :meth:`restart`
    simulate a crash and a restart on the same ports and database; :meth:`stop` always cleans up.
    """

    def __init__(self, db_url: str, workdir: Path, token: str, *, heartbeat_interval: float = 0.5,
                 heartbeat_timeout: float = 2.0, queues_file: str | None = None):  # fmt: skip
        self.db_url = db_url
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.port = free_port()
        self.zmq_port = free_port()
        while self.zmq_port == self.port:
            self.zmq_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.zmq_endpoint = f"tcp://127.0.0.1:{self.zmq_port}"
        self.log_path = self.workdir / "server.log"
        self.cmd = [sys.executable, "-m", "pandaflow.server", "--db", db_url, "--port", str(self.port),
                    "--zmq-port", str(self.zmq_port), "--heartbeat-interval", str(heartbeat_interval),
                    "--heartbeat-timeout", str(heartbeat_timeout),
                    "--info-file", str(self.workdir / "server.json")]  # fmt: skip
        if queues_file:
            self.cmd += ["--queues", queues_file]
        self.env = dict(os.environ, PANDAFLOW_TOKEN=token, PANDAFLOW_HOME=str(self.workdir / "home"))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.proc.returncode} while starting:\n{_tail(self.log_path)}"
                )
            try:
                reply = requests.get(f"{self.url}/api/v1/info", headers=self.headers(), timeout=2)
                if reply.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"the server did not answer within {timeout:g} s:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def kill9(self) -> None:
        """Crash it: SIGKILL, no chance to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def restart(self) -> ServerProcess:
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()
        return self.start()

    def stop(self) -> None:
        """Terminate (then kill) the server; safe to call at any time, repeatedly."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc)
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)

    def log(self) -> str:
        return _tail(self.log_path)

    # -- REST
    def get(self, path: str, **params: Any) -> Any:
        reply = requests.get(f"{self.url}/api/v1{path}", headers=self.headers(), params=params, timeout=30)
        reply.raise_for_status()
        return reply.json()

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(f"{self.url}/api/v1{path}", headers=self.headers(), json=body, timeout=30)


class PilotProcess:
    """``python -m pandaflow.pilot`` as a subprocess in its own session.

    :meth:`kill9` kills the pilot process alone (its warm workers live on until they notice);
    :meth:`terminate` sends SIGTERM; :meth:`stop` kills the whole process group.
    """

    def __init__(self, zmq_endpoint: str, token: str, workdir: Path, *, cores: int = 1,
                 queue: str = "local", name: str | None = None, extra: list[str] | None = None):  # fmt: skip
        self.name = name or f"pilot-{uuid.uuid4().hex[:8]}"
        self.workdir = Path(workdir) / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "pilot.log"
        self.cmd = [sys.executable, "-m", "pandaflow.pilot", "--zmq", zmq_endpoint, "--cores", str(cores),
                    "--queue", queue, "--name", self.name, "--workdir", str(self.workdir),
                    *(extra or [])]  # fmt: skip
        self.env = dict(os.environ, PANDAFLOW_TOKEN=token)
        self.proc: subprocess.Popen | None = None
        self.tree: list[psutil.Process] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> PilotProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         start_new_session=True)  # fmt: skip
        return self

    def _remember_tree(self) -> None:
        """Note the pilot's descendants (warm workers leave its process group with setsid)."""
        try:
            self.tree += psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            pass

    def kill9(self) -> None:
        """Crash the pilot: SIGKILL to the pilot process only, as a node failure or OOM killer would."""
        assert self.proc is not None
        self._remember_tree()
        self.proc.kill()
        self.proc.wait(30)

    def freeze(self) -> None:
        """SIGSTOP the pilot process (a node that hangs): it neither heartbeats nor reports."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        assert self.proc is not None
        self._remember_tree()
        self.proc.terminate()

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Kill the pilot, its process group and every descendant seen; safe to call repeatedly."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._remember_tree()
        _kill_group(self.proc)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for child in self.tree:
            try:
                child.kill()
            except psutil.Error:
                pass
        gone(self.tree)

    def log(self) -> str:
        return _tail(self.log_path)


def named(identity: str, name: str) -> bool:
    """True when a pilot's identity belongs to a pilot started with ``--name name`` (each
    pilot process adds a random suffix of its own)."""
    return identity.rsplit("-", 1)[0] == name


def heartbeating(server: ServerProcess, name: str) -> bool:
    """True once the server has had a heartbeat from the pilot called ``name`` (not just its registration)."""
    for pilot in server.get("/pilots")["pilots"]:
        if named(pilot["name"], name):
            return pilot["status"] == "active" and pilot["last_heartbeat_at"] > pilot["registered_at"]
    return False


def pythonpath(*dirs: str | os.PathLike) -> str:
    """A ``$PYTHONPATH`` for subprocesses that import test modules (pilots unpickle parsl apps by
    reference, so they import the module defining them): ``dirs``, then the tests directory (for
    :mod:`support`), then the current value."""
    current = os.environ.get("PYTHONPATH")
    return os.pathsep.join(filter(None, [*map(str, dirs), str(TESTS), current]))


class ProcessTag:
    """Marks every process a test starts (through an environment variable they inherit) so the
    test can list what is still alive, and its teardown can kill whatever leaked."""

    VARIABLE = "PANDAFLOW_TEST_TAG"

    def __init__(self, tag: str):
        self.tag = tag

    def alive(self) -> list[psutil.Process]:
        """Processes other than this one that carry the tag (pilots, servers, workers, forkservers)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == os.getpid():
                continue
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(self.VARIABLE) == self.tag:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def kill_all(self) -> list[psutil.Process]:
        """SIGKILL every tagged process; return them (once they are gone or zombies)."""
        procs = self.alive()
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and set(procs) & set(self.alive()):
            time.sleep(0.02)
        return procs
