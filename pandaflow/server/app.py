"""The job server: Flask app factory and the process that runs REST + dispatcher together."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from flask import Flask
from sqlalchemy import Engine, delete, insert

from pandaflow import config as pf_config
from pandaflow.server.dispatch.dispatcher import Dispatcher
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.jobs.queues import Queue, default_queue_file, load_queues
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Validated server settings (``pandaflow server --help`` documents each)."""

    db_url: str = field(default_factory=pf_config.default_db_url)
    """Database URL: ``sqlite:///PATH`` or ``postgresql+psycopg://user:pass@host/db``."""
    host: str = "127.0.0.1"
    """Address the REST API and the ZeroMQ dispatcher bind to (loopback unless told)."""
    port: int = 8800
    """REST port, 0..65535 (0: any free port)."""
    zmq_port: int | None = None
    """ZeroMQ port of the dispatcher (None: ``port`` + 1, or any free port when ``port`` is 0)."""
    queues_file: str | None = None
    """Queue description JSON (None: the shipped ``configs/queues/local.json``)."""
    token: str | None = None
    """Bearer token of the REST API and ZeroMQ messages (None: a new random one)."""
    heartbeat_interval: float = 5.0
    """Seconds between pilot heartbeats (positive)."""
    heartbeat_timeout: float | None = None
    """Seconds of silence before a pilot is lost and its running jobs retried (None: three heartbeat
    intervals, at least 10 s)."""
    info_file: str | None = None
    """Where to publish the server's URL, ZeroMQ endpoint and pid for clients on this machine."""
    harvester: bool = False
    """Also run a harvester thread for the queues that name a provider."""
    harvester_interval: float = 10.0
    """Seconds between harvester cycles."""
    harvester_workdir: str | None = None
    """The harvester's work directory (None: ``harvester/`` beside a SQLite file, else under
    ``$PANDAFLOW_HOME``)."""

    def __post_init__(self) -> None:
        if not (0 <= self.port < 65536):
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.zmq_port is None:
            self.zmq_port = self.port + 1 if self.port else 0
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")


@dataclass
class ServerState:
    """What request handlers share: the database, queues, broker, dispatcher and token."""

    engine: Engine
    queues: list[Queue]
    broker: Broker
    token: str
    dispatcher: Dispatcher | None = None
    started_at: float = field(default_factory=time.time)

    def poke(self, message: dict) -> None:
        if self.dispatcher is not None:
            self.dispatcher.poke(message)


def sync_queues(engine: Engine, queues: list[Queue]) -> None:
    """Make the queues table mirror the loaded description."""
    now = time.time()
    with engine.begin() as conn:
        conn.execute(delete(s.queues))
        conn.execute(
            insert(s.queues),
            [{"name": q.name, "description": json.dumps(q.to_dict()), "updated_at": now} for q in queues],
        )


def create_app(state: ServerState) -> Flask:
    """Flask app factory: the REST API blueprint (and the monitor when present)."""
    from pandaflow.server.front.api import api

    app = Flask("pandaflow")
    app.extensions["pandaflow"] = state
    app.json.sort_keys = False
    app.register_blueprint(api, url_prefix="/api/v1")
    try:
        from pandaflow.monitor import blueprint as monitor_blueprint
    except ImportError:
        monitor_blueprint = None
    if monitor_blueprint is not None:
        app.register_blueprint(monitor_blueprint)
    return app


class Server:
    """A running job server: database, dispatcher thread and REST API."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        queues = load_queues(cfg.queues_file or default_queue_file())
        self.engine = open_database(cfg.db_url)
        sync_queues(self.engine, queues)
        self.token = cfg.token or pf_config.new_token()
        broker = Broker(queues)
        self.dispatcher = Dispatcher(
            self.engine,
            broker,
            self.token,
            f"tcp://{cfg.host}:{cfg.zmq_port}",
            heartbeat_interval=cfg.heartbeat_interval,
            heartbeat_timeout=cfg.heartbeat_timeout,
        )
        self.state = ServerState(self.engine, queues, broker, self.token, self.dispatcher)
        self.harvester = self._harvester(queues) if cfg.harvester else None
        self.app = create_app(self.state)
        self._http = None
        self.url = ""

    def start(self) -> None:
        """Start the dispatcher and the HTTP server threads; returns once both listen."""
        from waitress.server import create_server

        self.dispatcher.start()
        if self.harvester is not None:
            self.harvester.start()
        self._http = create_server(
            self.app, host=self.cfg.host, port=self.cfg.port, threads=8, ident="pandaflow"
        )
        port = self._http.effective_port
        self.url = f"http://{self._fmt_host()}:{port}"
        threading.Thread(target=self._http.run, name="pandaflow-http", daemon=True).start()
        if self.cfg.info_file:
            info = {
                "url": self.url,
                "zmq": self.dispatcher.endpoint,
                "pid": os.getpid(),
                "db": self.cfg.db_url,
            }
            Path(self.cfg.info_file).parent.mkdir(parents=True, exist_ok=True)
            Path(self.cfg.info_file).write_text(json.dumps(info))
        log.info(
            "pandaflow server: REST %s, ZeroMQ %s, database %s",
            self.url,
            self.dispatcher.endpoint,
            self.engine.url.render_as_string(hide_password=True),
        )

    def _harvester(self, queues: list[Queue]):
        from pandaflow.harvester import Harvester, HarvesterConfig

        workdir = self.cfg.harvester_workdir
        if workdir is None:
            database = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
            on_disk = database and database != ":memory:"
            workdir = str((Path(database).resolve().parent if on_disk else pf_config.home()) / "harvester")
        return Harvester(
            self.engine,
            HarvesterConfig(
                zmq_endpoint=self.dispatcher.endpoint,
                token=self.token,
                workdir=workdir,
                interval=self.cfg.harvester_interval,
                queues=queues,
            ),
        )

    def _fmt_host(self) -> str:
        host = self.cfg.host
        return f"[{host}]" if ":" in host else host

    def stop(self) -> None:
        if self.harvester is not None:
            self.harvester.stop()
        if self._http is not None:
            self._http.close()
        self.dispatcher.stop()
        self.engine.dispose()

    def serve_forever(self, exit_with: int | None = None) -> None:
        """Run until SIGTERM/SIGINT (or until process ``exit_with`` is gone)."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            while not stop.wait(1.0):
                if exit_with and not psutil.pid_exists(exit_with):
                    log.warning("process %d that started this server is gone: stopping", exit_with)
                    break
        finally:
            self.stop()
