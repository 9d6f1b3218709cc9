"""Settings of one harvester."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field

from pandaflow import config as pf_config
from pandaflow.server.jobs.queues import Queue


@dataclass
class HarvesterConfig:
    """Settings of one harvester (``pandaflow harvester --help`` documents each)."""

    zmq_endpoint: str  # where pilots find the server's dispatcher
    token: str | None = None  # written to ``workdir/token`` for pilots, unless token_file is given
    token_file: str | None = None  # a token file pilots can read (on a shared file system)
    workdir: str = field(default_factory=lambda: str(pf_config.home() / "harvester"))
    name: str = field(default_factory=socket.gethostname)  # a harvester follows its own workers only
    interval: float = 10.0  # seconds between cycles
    python: str = sys.executable  # the interpreter pilots run with
    queues: list[Queue] | None = None  # default: read from the server's database every cycle

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, got {self.interval}")
        if not self.token and not self.token_file:
            raise ValueError("the harvester needs the server's token (token or token_file) for its pilots")
