"""``pandaflow server`` and ``pandaflow pilot``: the long-running processes."""

from __future__ import annotations

import os
import sys

import click

from pandaflow import config as pf_config
from pandaflow.cli.root import main, setup_logging


@main.command()
@click.option("--db", "db_url", default=None, help="Database URL (default: sqlite under $PANDAFLOW_HOME).")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told)."
)
@click.option("--port", default=8800, show_default=True, type=int, help="REST port (0: any free port).")
@click.option("--zmq-port", default=None, type=int, help="ZeroMQ port (default: REST port + 1).")
@click.option("--queues", "queues_file", default=None, type=click.Path(), help="Queue description JSON.")
@click.option("--token-file", default=None, type=click.Path(), help="File holding the token.")
@click.option(
    "--heartbeat-interval",
    default=5.0,
    show_default=True,
    type=float,
    help="Seconds between pilot heartbeats.",
)
@click.option(
    "--heartbeat-timeout", default=None, type=float, help="Seconds of silence before a pilot is lost."
)
@click.option(
    "--info-file",
    default=None,
    type=click.Path(),
    help="Where to write url/zmq/pid (default: $PANDAFLOW_HOME/server.json).",
)
@click.option("--exit-with", default=None, type=int, help="Stop when the process with this pid is gone.")
@click.option("-v", "--verbose", is_flag=True)
def server(db_url, host, port, zmq_port, queues_file, token_file, heartbeat_interval, heartbeat_timeout,
           info_file, exit_with, verbose) -> None:  # fmt: skip
    """Run the job server (REST API + ZeroMQ dispatcher)."""
    from pandaflow.server.app import Server, ServerConfig
    from pandaflow.server.jobs.queues import QueueConfigError, load_queues
    from pandaflow.server.store.db import DatabaseError

    setup_logging(verbose)
    if queues_file is not None:  # a file with a mistake is refused before anything is made
        try:
            load_queues(queues_file)
        except QueueConfigError as exc:
            raise click.ClickException(str(exc)) from None
    home = pf_config.home()
    token = pf_config.load_token(None, token_file)
    if token is None:
        token = pf_config.new_token()
        pf_config.write_private(home / "token", token)
        click.echo(f"generated a token in {home / 'token'}", err=True)
    if db_url is None:
        home.mkdir(parents=True, exist_ok=True)
        db_url = pf_config.default_db_url()
    try:
        cfg = ServerConfig(db_url=db_url, host=host, port=port, zmq_port=zmq_port, queues_file=queues_file,
                           token=token, heartbeat_interval=heartbeat_interval,
                           heartbeat_timeout=heartbeat_timeout,
                           info_file=info_file or str(home / "server.json"))  # fmt: skip
        srv = Server(cfg)
    except (ValueError, QueueConfigError, DatabaseError) as exc:
        raise click.ClickException(str(exc)) from None
    srv.serve_forever(exit_with=exit_with)


@main.command()
@click.option(
    "--server", "server_url", default=None, help="Server REST URL (its ZeroMQ address is asked for)."
)
@click.option(
    "--zmq", "zmq_endpoint", default=None, help="Server ZeroMQ endpoint, e.g. tcp://127.0.0.1:8801."
)
@click.option("--queue", default="local", show_default=True)
@click.option("--cores", default=None, type=int, help="Worker slots (default: CPU count).")
@click.option("--memory", "memory_mb", default=None, type=int, help="Memory this pilot offers, MB.")
@click.option("--workdir", default=".", show_default=True, type=click.Path())
@click.option("--name", default=None, help="Pilot name (default: host-pid-random).")
@click.option("--idle-timeout", default=0.0, type=float, help="Exit after this many idle seconds (0: never).")
@click.option(
    "--prefetch", default=None, type=int,
    help="Jobs held beyond free slots (default: adaptive, about 1 s of work per slot, 1-16 per slot).",
)
@click.option(
    "--server-timeout", default=600.0, show_default=True, type=float,
    help="Give up after this many seconds without a word from the server (0: never).",
)
@click.option("--exit-with", default=None, type=int, help="Exit when the process with this pid is gone.")
@click.option("--token-file", default=None, type=click.Path())
@click.option("--worker-id", default=None, type=int, help="Harvester worker this pilot runs in (set by it).")
@click.option("-v", "--verbose", is_flag=True)
def pilot(server_url, zmq_endpoint, queue, cores, memory_mb, workdir, name, idle_timeout, prefetch,
          server_timeout, exit_with, token_file, worker_id, verbose) -> None:  # fmt: skip
    """Run a pilot that pulls jobs from a server and runs them."""
    from pandaflow.client import ClientError, discover
    from pandaflow.pilot.agent import Pilot, PilotConfig, PilotError

    setup_logging(verbose)
    token = pf_config.load_token(None, token_file)
    if not token:
        raise click.ClickException("no token: set PANDAFLOW_TOKEN or pass --token-file")
    if zmq_endpoint is None:
        server_url = pf_config.server_url(server_url)
        if not server_url:
            raise click.ClickException("give --server URL (or --zmq ENDPOINT)")
        try:
            zmq_endpoint = discover(server_url, token)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        cfg = PilotConfig(zmq_endpoint=zmq_endpoint, token=token, queue=queue,
                          cores=cores or os.cpu_count() or 1,
                          memory_mb=memory_mb, workdir=workdir, idle_timeout=idle_timeout, prefetch=prefetch,
                          server_timeout=server_timeout, exit_with=exit_with, worker_id=worker_id,
                          **({"name": name} if name else {}))  # fmt: skip
    except PilotError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(Pilot(cfg).run())
