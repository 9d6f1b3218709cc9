"""The processes a :class:`~pandaflow.executors.PandaExecutor` runs for itself: an embedded job
server (SQLite under parsl's run directory), local pilots, or pilots launched through a parsl
``ExecutionProvider``. They are started, watched (one that dies is restarted: the database holds
every task, and a dead pilot's jobs go back to the queue), and stopped with the executor."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from pandaflow import config as pf_config

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Processes:
    """The server and pilot subprocesses of one executor, logging to ``home/<name>.log``."""

    def __init__(self, home: str, label: str, client_id: str):
        self.home = home
        self.label = label
        self.client_id = client_id
        self.token = ""
        self.zmq_endpoint = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self.cmds: dict[str, list[str]] = {}
        self.blocks: list[Any] = []
        self.provider: Any = None
        self.queue = "local"
        self.workers = 1
        self.workdir: str | None = None  # the local pilots' --workdir (default: their cwd)
        self.env: dict[str, str] = {}  # added to the environment of every process (and so of every job)

    # ---------------------------------------------------------------- the embedded server
    def start_server(self, db_url: str | None, heartbeat_interval: float) -> tuple[str, str, str]:
        """Start ``python -m pandaflow.server`` on free loopback ports, stopped when this process
        exits; returns (REST URL, ZeroMQ endpoint, database URL)."""
        self.token = pf_config.new_token()
        port, zport = free_port(), free_port()
        db = db_url or f"sqlite:///{os.path.abspath(os.path.join(self.home, 'pandaflow.db'))}"
        self.zmq_endpoint = f"tcp://127.0.0.1:{zport}"
        self.spawn("server", [
            sys.executable, "-m", "pandaflow.server", "--db", db, "--host", "127.0.0.1", "--port", str(port),
            "--zmq-port", str(zport), "--heartbeat-interval", str(heartbeat_interval),
            "--exit-with", str(os.getpid()), "--info-file", os.path.join(self.home, "server.json"),
        ])  # fmt: skip
        return f"http://127.0.0.1:{port}", self.zmq_endpoint, db

    # ---------------------------------------------------------------- pilots
    def pilot_cmd(self, name: str | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "pandaflow.pilot", "--zmq", self.zmq_endpoint, "--queue", self.queue,
               "--cores", str(self.workers)]  # fmt: skip
        if self.workdir:
            cmd += ["--workdir", self.workdir]
        if name:
            cmd += ["--name", f"{self.client_id[:8]}-{name}"]
        return cmd

    def start_local_pilot(self, name: str) -> None:
        self.spawn(name, [*self.pilot_cmd(name), "--exit-with", str(os.getpid())])

    def start_provider_pilots(self, provider: Any, server_url: str | None) -> None:
        """Submit ``provider.init_blocks`` pilot blocks (the token in a private file beside)."""
        self.provider = provider
        token_file = Path(self.home) / "token"
        pf_config.write_private(token_file, self.token)
        cmd = " ".join(self.pilot_cmd()) + f" --token-file {token_file}"
        if server_url and provider.__class__.__name__ != "LocalProvider":
            cmd += f" --server {server_url}"
        provider.script_dir = self.home
        for _ in range(max(1, getattr(provider, "init_blocks", 1))):
            self.blocks.append(provider.submit(cmd, 1, f"pandaflow-pilot-{self.label}"))

    # ---------------------------------------------------------------- life
    def spawn(self, name: str, cmd: list[str]) -> None:
        env = {**os.environ, **self.env, "PANDAFLOW_TOKEN": self.token}
        with open(os.path.join(self.home, f"{name}.log"), "ab") as logf:
            self.procs[name] = subprocess.Popen(
                cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.cmds[name] = cmd

    def supervise(self) -> None:
        """Restart the processes that died (a pilot comes back as a new pilot process)."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                log.warning("embedded %s exited with %s; restarting it", name, proc.returncode)
                if name == "server":
                    self.spawn(name, self.cmds[name])
                else:
                    self.start_local_pilot(name)

    def stop(self) -> None:
        """Stop the pilots (and their blocks), then the server."""
        for name, proc in self.procs.items():
            if name != "server" and proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs.items():
            if name != "server":
                _wait(proc)
        if self.blocks:
            try:
                self.provider.cancel(self.blocks)
            except Exception:
                log.exception("cancelling pilot blocks failed")
        server = self.procs.get("server")
        if server is not None and server.poll() is None:
            server.terminate()
            _wait(server)


def _wait(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
