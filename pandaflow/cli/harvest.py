"""Provisioning: ``pandaflow harvester`` (keep pilots alive on the queues with a provider), and
what harvesters did: ``workers`` and ``queues``."""

from __future__ import annotations

from typing import Any

import click

from pandaflow import config as pf_config
from pandaflow import tables
from pandaflow.cli.output import emit, listing, with_json
from pandaflow.cli.root import main, settings, setup_logging
from pandaflow.cli.sources import open_database, read


def queues_text(queues: list[dict[str, Any]], harvesters: bool = False) -> str:
    """The queues table (limits, live job and pilot counts), with each harvester's last cycle."""
    rows = [
        [q["name"], q.get("status"), q.get("mode"), q.get("site"),
         f"{q.get('min_memory_mb', 0)}-{q.get('max_memory_mb', '?')}", q.get("cores"),
         tables.duration(q.get("max_walltime_s")) if q.get("max_walltime_s") else "unlimited",
         q["ready_jobs"], q.get("reserved_jobs", 0), q["dispatched_jobs"], q["running_jobs"],
         q["active_pilots"]]
        for q in queues
    ]  # fmt: skip
    headers = ["QUEUE", "STATUS", "MODE", "SITE", "MEMORY MB", "CORES", "WALLTIME", "READY", "RESERVED",
               "DISPATCHED", "RUNNING", "PILOTS"]  # fmt: skip
    if not rows:
        return "no queues"
    text = tables.table(rows, headers)
    status = [h for q in queues for h in q.get("harvesters") or ()]
    if harvesters and status:
        text += "\n\n" + _harvesters_text(status)
    return text


@main.command()
@with_json
def queues() -> None:
    """List queues with their limits, live job and pilot counts, and each harvester's last cycle."""
    emit(read("list_queues"), lambda data: queues_text(data["queues"], harvesters=True))


def _harvest_db(db_url: str | None) -> str:
    """The database the harvester (and ``workers``) read: given, else the local server's."""
    url = db_url or settings().db_url or (pf_config.server_info() or {}).get("db")
    if not url:
        raise click.ClickException(
            "no database known: pass --db URL (the server's database), or run where `pandaflow server` "
            f"wrote {pf_config.home() / 'server.json'}"
        )
    return url


def _report_text(reports: dict[str, Any]) -> str:
    if not reports:
        return "no queue has a provider"
    rows = [
        [r.queue, r.ready_jobs, r.unfit_jobs, r.reserved_jobs, r.idle_slots, r.queued_workers,
         r.running_workers, len(r.submitted), len(r.cancelled), r.action, "; ".join(r.errors)]
        for r in reports.values()
    ]  # fmt: skip
    headers = ["QUEUE", "READY", "UNFIT", "RESERVED", "FREE SLOTS", "QUEUED", "RUNNING", "SUBMITTED",
               "CANCELLED", "ACTION", "ERROR"]  # fmt: skip
    return tables.table(rows, headers, max_width={"ACTION": 60, "ERROR": 60})


@main.command()
@click.option("--db", "db_url", default=None, help="The server's database (default: the local server's).")
@click.option("--server", "server_url", default=None, help="Server REST URL (asked for its ZeroMQ address).")
@click.option("--zmq", "zmq_endpoint", default=None, help="ZeroMQ endpoint pilots connect to (skips asking).")
@click.option(
    "--token-file", default=None, type=click.Path(),
    help="Token file, used as is by pilots (it must be readable where they run).",
)  # fmt: skip
@click.option(
    "--workdir", default=None, type=click.Path(),
    help="Submit scripts, pilot work dirs and token (default: $PANDAFLOW_HOME/harvester).",
)  # fmt: skip
@click.option("--name", default=None, help="Harvester name (default: host name); it follows its own workers.")
@click.option(
    "--interval", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds per cycle."
)
@click.option(
    "--queues", "queues_file", default=None, type=click.Path(exists=True),
    help="Serve these queue descriptions (default: the server's, re-read every cycle).",
)  # fmt: skip
@click.option("--python", "pilot_python", default=None, help="Python pilots run with (default: this one).")
@click.option("--once", is_flag=True, help="Run one cycle, print what it did, and exit.")
@click.option("-v", "--verbose", is_flag=True)
def harvester(db_url, server_url, zmq_endpoint, token_file, workdir, name, interval, queues_file,
              pilot_python, once, verbose) -> None:  # fmt: skip
    """Keep pilots alive on every queue with a provider (Slurm, local, Kubernetes, ...)."""
    import signal
    import threading

    from pandaflow.client import ClientError, discover
    from pandaflow.harvester import Harvester, HarvesterConfig
    from pandaflow.server.jobs.queues import QueueConfigError, load_queues

    setup_logging(verbose)
    engine = open_database(_harvest_db(db_url))
    token = pf_config.load_token(settings().token, token_file)
    if not token:
        raise click.ClickException("no token: pass --token-file, --token, or set PANDAFLOW_TOKEN")
    if zmq_endpoint is None:
        url = pf_config.server_url(server_url or settings().server_url)
        if not url:
            raise click.ClickException("give --server URL (or --zmq ENDPOINT) so pilots can find the server")
        try:
            zmq_endpoint = discover(url, token)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        queues = load_queues(queues_file) if queues_file else None
        extra = {k: v for k, v in {"workdir": workdir, "name": name, "python": pilot_python}.items() if v}
        cfg = HarvesterConfig(
            zmq_endpoint=zmq_endpoint, token=token, token_file=token_file, interval=interval, queues=queues,
            **extra,
        )  # fmt: skip
        harvest = Harvester(engine, cfg)
    except (ValueError, QueueConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if once:
        reports = harvest.cycle()
        emit({q: vars(r) for q, r in reports.items()}, lambda _: _report_text(reports))
        engine.dispose()
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    harvest.start()
    try:
        stop.wait()
    finally:
        harvest.stop()
        engine.dispose()


def _harvesters_text(status: list[dict[str, Any]]) -> str:
    """Each harvester's last cycle on each queue: demand, supply, what it did and what failed."""
    rows = [
        [q["queue"], q["harvester"], tables.when(q["cycle_at"]), q["ready_jobs"], q["unfit_jobs"],
         q["idle_slots"], q["queued_workers"], q["running_workers"], q["action"], q["error"]]
        for q in status
    ]  # fmt: skip
    headers = ["QUEUE", "HARVESTER", "LAST CYCLE", "READY", "UNFIT", "FREE SLOTS", "QUEUED", "RUNNING",
               "ACTION", "ERROR"]  # fmt: skip
    return tables.table(rows, headers, max_width={"ACTION": 50, "ERROR": 60})


def _workers_text(data: dict[str, Any]) -> str:
    parts = []
    if data["queues"]:
        parts.append(_harvesters_text(data["queues"]))
    rows = [
        [x["id"], x["queue"], x["state"], x["batch_state"], x["provider"], x["provider_job_id"],
         x["cores"], x["pilot"], tables.when(x["submitted_at"]), tables.duration(x["age_s"]), x["error"]]
        for x in data["workers"]
    ]  # fmt: skip
    headers = ["ID", "QUEUE", "STATE", "BATCH", "PROVIDER", "JOB", "CORES", "PILOT", "SUBMITTED", "AGE",
               "ERROR"]  # fmt: skip
    text = tables.table(rows, headers, max_width={"JOB": 24, "PILOT": 30, "ERROR": 60})
    parts.append(listing(data, "workers", text))
    return "\n\n".join(parts)


@main.command()
@click.option("--db", "db_url", default=None, help="Read this database directly instead of asking a server.")
@click.option("--queue", help="Only workers of this queue.")
@click.option(
    "--state", "states", multiple=True,
    help="Only workers in this state (repeat, or comma-separate): submitted, running, finished, failed, "
    "cancelled, missing.",
)  # fmt: skip
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@with_json
def workers(db_url, queue, states, limit, offset) -> None:
    """List the pilot workers harvesters submitted, newest first, and each queue's harvester status."""
    if db_url:
        settings().db_url = db_url
    wanted = [s.strip() for item in states for s in item.split(",") if s.strip()] or None
    emit(read("list_workers", queue=queue, state=wanted, limit=limit, offset=offset), _workers_text)
