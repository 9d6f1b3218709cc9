"""The ``pandaflow`` command: run a server or pilots, and follow and control the work.

Read commands talk to a running server over REST (``--server``), or read a database directly
(``--db``) with the same queries the server uses, so no server is needed to look at one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from pandaflow import config as pf_config
from pandaflow import tables


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@dataclass
class _Settings:
    """Where the read and control commands get their data (from the group's options)."""

    server_url: str | None
    token: str | None
    db_url: str | None
    as_json: bool


@click.group()
@click.version_option(package_name="pandaflow")
@click.option(
    "--server",
    "server_url",
    default=None,
    envvar="PANDAFLOW_SERVER",
    show_envvar=True,
    help="Server REST URL (default: the server last started on this machine).",
)
@click.option(
    "--token", default=None, help="Server token (default: $PANDAFLOW_TOKEN or $PANDAFLOW_HOME/token)."
)
@click.option(
    "--db",
    "db_url",
    default=None,
    help="Read this database directly (URL or SQLite file) instead of asking a server.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON the REST API returns instead of tables."
)
@click.pass_context
def main(
    ctx: click.Context, server_url: str | None, token: str | None, db_url: str | None, as_json: bool
) -> None:
    """pandaflow: job server, pilots and parsl executor."""
    ctx.obj = _Settings(server_url, token, db_url, as_json)


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
    from pandaflow.server.db import DatabaseError
    from pandaflow.server.queues import QueueConfigError

    _logging(verbose)
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

    _logging(verbose)
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


# ---------------------------------------------------------------- following and controlling the work

_NEEDS_SERVER = (
    "{action} needs a running server: it changes job states that the server's dispatcher must act on "
    "(killing jobs on pilots, telling executors, dispatching retried jobs). Drop --db and start "
    "`pandaflow server` (or pass --server URL)"
)


def _settings() -> _Settings:
    return click.get_current_context().find_root().obj


def _output(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command its own ``--json`` too, so it may follow the command name."""

    @click.option(
        "--json", "as_json", is_flag=True, help="Print the JSON the REST API returns instead of tables."
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        if as_json:
            _settings().as_json = True
        return fn(*args, **kwargs)

    return wrapper


def _open_database(url: str):
    """An engine on an existing pandaflow database (never creates or migrates one)."""
    from pathlib import Path

    from sqlalchemy.exc import SQLAlchemyError

    from pandaflow.server.db import DatabaseError, is_current, make_engine, sqlite_url

    if "://" not in url:
        url = sqlite_url(url)  # a bare path names a SQLite file
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.split("///", 1)[1])
        if not path.is_file():
            # Connecting would silently create an empty file.
            raise click.ClickException(f"no database file {path}: check --db")
    try:
        engine = make_engine(url)
        current = is_current(engine)
    except (DatabaseError, SQLAlchemyError) as exc:
        raise click.ClickException(f"cannot open database {url}: {exc}") from None
    if not current:
        engine.dispose()
        raise click.ClickException(
            f"{url} does not hold a current pandaflow schema: start `pandaflow server --db {url}` once "
            "to create or upgrade it"
        )
    return engine


def _client():
    from pandaflow.client import Client

    st = _settings()
    url = pf_config.server_url(st.server_url)
    if not url:
        raise click.ClickException(
            "no server known: pass --server URL or set PANDAFLOW_SERVER, start one with `pandaflow server`, "
            "or read a database directly with --db URL"
        )
    token = pf_config.load_token(st.token)
    if not token:
        raise click.ClickException(
            "no token: pass --token, set PANDAFLOW_TOKEN, or run where `pandaflow server` wrote "
            f"{pf_config.home() / 'token'}"
        )
    return Client(url, token)


def _remote(call: Callable[[Any], Any]) -> Any:
    from pandaflow.client import ClientError

    try:
        return call(_client())
    except ClientError as exc:
        problems = "".join(f"\n  {p}" for p in exc.problems)
        raise click.ClickException(f"{exc}{problems}") from None


def _read(query: str, /, **kwargs: Any) -> Any:
    """``queries.<query>`` on the ``--db`` database, else the same-named client call to the server."""
    db_url = _settings().db_url
    if not db_url:
        return _remote(lambda client: getattr(client, query)(**kwargs))
    from pandaflow.server import queries

    engine = _open_database(db_url)
    try:
        with engine.connect() as conn:
            return getattr(queries, query)(conn, **kwargs)
    except (queries.NotFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()


def _emit(data: Any, human: Callable[[Any], str]) -> None:
    if _settings().as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(human(data))


def _footer(page: dict[str, Any], key: str) -> str:
    shown, offset, total = len(page[key]), page["offset"], page["total"]
    if not shown:
        return f"no {key} match" if not offset else f"no {key} past offset {offset} (there are {total})"
    text = f"{key} {offset + 1}-{offset + shown} of {total}"
    if offset + shown < total:
        text += f"; next page: --offset {offset + shown}"
    return text


def _listing(page: dict[str, Any], key: str, text: str) -> str:
    return f"{text}\n{_footer(page, key)}" if page[key] else _footer(page, key)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no jobs"


def _error(code: int, name: str, diag: str) -> str:
    return f"{name}: {diag}" if code else ""


def _mb(value: float | None) -> str:
    return tables.EMPTY if value is None else f"{value:g} MB"


# ---------------------------------------------------------------- status, workflows, jobs


def _queues_text(queues: list[dict[str, Any]], harvesters: bool = False) -> str:
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


def _summary_text(data: dict[str, Any]) -> str:
    pilots = ", ".join(f"{n} {state}" for state, n in data["pilots"].items())
    head = f"workflows: {data['workflows']}   jobs: {data['n_jobs']}   pilots: {pilots}"
    jobs = tables.table([list(data["jobs"].values())], [s.upper() for s in data["jobs"]])
    return "\n\n".join([head, jobs, _queues_text(data["queues"])])


@main.command()
@_output
def status() -> None:
    """Jobs by state, pilots and queues at a glance."""
    _emit(_read("summary"), _summary_text)


def _workflows_text(page: dict[str, Any]) -> str:
    rows = [[w["id"], w["name"], w["owner"], w["status"], w["n_jobs"], _counts(w["counts"]),
             tables.when(w["created_at"])] for w in page["workflows"]]  # fmt: skip
    text = tables.table(rows, ["ID", "NAME", "OWNER", "STATUS", "JOBS", "BY STATE", "CREATED"],
                        max_width={"NAME": 30, "OWNER": 16, "BY STATE": 60})  # fmt: skip
    return _listing(page, "workflows", text)


def _workflow_text(w: dict[str, Any]) -> str:
    head = tables.pairs([
        ("workflow", f"{w['id']} {w['name']}"), ("owner", w["owner"]), ("client", w["client"]),
        ("status", w["status"]), ("jobs", f"{w['n_jobs']} ({_counts(w['counts'])})"),
        ("created", tables.when(w["created_at"])),
    ])  # fmt: skip
    rows = [[t["id"], t["name"], t["status"], t["n_jobs"], _counts(t["counts"])] for t in w["tasks"]]
    tasks = tables.table(
        rows, ["TASK", "NAME", "STATUS", "JOBS", "BY STATE"], max_width={"NAME": 30, "BY STATE": 60}
    )
    return f"{head}\n\n{tasks}" if rows else f"{head}\n\nno tasks"


@main.command()
@click.argument("workflow_id", type=int, required=False)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@_output
def workflows(workflow_id: int | None, limit: int, offset: int) -> None:
    """List workflows, newest first, or show one workflow and its tasks."""
    if workflow_id is None:
        _emit(_read("list_workflows", limit=limit, offset=offset), _workflows_text)
    else:
        _emit(_read("get_workflow", workflow_id=workflow_id), _workflow_text)


# ---------------------------------------------------------------- DAG files: submit and report


def _plan_text(plan: dict[str, Any]) -> str:
    n_tasks = len(plan["tasks"])
    head = (
        f"{plan['file']}: workflow {plan['name']!r}, {plan['n_jobs']} job(s) in {n_tasks} task(s), "
        f"{plan['n_products']} product(s) written, {plan['available']} declared available"
    )
    rows = tables.table([[label, n] for label, n in plan["tasks"].items()], ["TASK", "JOBS"], max_width=0)
    shown = plan["roots"][:10]
    more = f" (and {plan['n_roots'] - len(shown)} more)" if plan["n_roots"] > len(shown) else ""
    roots = f"roots ({plan['n_roots']} ready at submission): {', '.join(shown)}{more}"
    parts = [head, rows, roots]
    if plan.get("clustered"):
        merged = ", ".join(f"{n} in {label}" for label, n in plan["clustered"].items())
        parts.append(f"clustered: the file's jobs run as one payload per cluster ({merged})")
    if plan.get("sites"):
        shares = ", ".join(f"{site} {share:g}" for site, share in plan["sites"].items())
        parts.append(f"sites (shares): {shares}")
    return "\n\n".join([*parts, "nothing was submitted (--dry-run)"])


def _owner(given: str | None) -> str:
    if given is not None:
        return given
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in this environment (e.g. a container)
        return ""


@main.command()
@click.argument("dag_file", type=click.Path(dir_okay=False))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the file and print the jobs per task and the roots; submit nothing.",
)
@click.option("--owner", default=None, help="Owner of the workflow (default: the file's 'owner', else you).")
@_output
def submit(dag_file: str, dry_run: bool, owner: str | None) -> None:
    """Submit a DAG file (JSON or YAML; see docs/dag.md) as one workflow.

    The file is validated here first (errors name the file and the key), then sent to the
    server, which stores every job or none.
    """
    from pandaflow import dagfile

    if _settings().db_url and not dry_run:
        raise click.ClickException(
            "submit needs a running server: it brokers the jobs to queues and its dispatcher hands them "
            "to pilots, so a database alone cannot take them. Drop --db and start `pandaflow server` "
            "(or pass --server URL); `pandaflow submit --dry-run FILE` checks a file without one"
        )
    try:
        dag = dagfile.load(dag_file)
    except dagfile.DagFileError as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        _emit(dag.plan(), _plan_text)
        return
    body = dag.body
    sent = _remote(
        lambda c: c.submit(
            body["name"], body["jobs"], owner=_owner(owner or dag.owner), available=dag.available,
            sites=dag.sites, site=dag.site,
        )
    )  # fmt: skip
    wid = sent["workflow_id"]
    n_roots = len(dag.roots())

    def text(data: dict[str, Any]) -> str:
        lines = [
            f"submitted workflow {wid} {dag.name!r}: {len(data['job_ids'])} job(s) in {len(dag.labels)} "
            f"task(s), {n_roots} ready now, the others wait for their inputs"
        ]
        if data["duplicates"]:
            lines.append(
                f"{len(data['duplicates'])} job(s) had been submitted before and were kept as they were"
            )
        if data.get("sites"):
            lines.append("jobs per site: " + ", ".join(f"{site} {n}" for site, n in data["sites"].items()))
        lines.append(f"follow it with:  pandaflow report {wid}")
        lines.append(f"                 pandaflow jobs --workflow {wid}")
        lines.append(f"cancel it with:  pandaflow cancel --workflow {wid}")
        return "\n".join(lines)

    _emit(sent, text)


def _bps_flag(data: dict[str, Any]) -> str:
    """The X column of `bps report`: a running workflow with failed, deleted or held jobs."""
    if data["bps_state"] != "RUNNING":
        return ""
    for column, flag in (("FAILED", "F"), ("DELETED", "D"), ("HELD", "H")):
        if data["total"][column]:
            return flag
    return ""


def _aligned(
    rows: list[list[Any]], headers: list[str], align: str, *, rule_after: tuple[int, ...] = ()
) -> str:
    """Columns in the `bps report` style (astropy's layout): one space between columns, a rule of
    dashes under the header (and after the rows listed); ``align`` has a ``<`` (left) or ``>``
    (right) per column."""
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [
            v.ljust(w) if a == "<" else v.rjust(w) for v, w, a in zip(values, widths, align, strict=True)
        ]
        return " ".join(parts).rstrip()

    rule = " ".join("-" * w for w in widths)
    out = [line(headers), rule]
    for i, r in enumerate(cells):
        out.append(line(r))
        if i in rule_after:
            out.append(rule)
    return "\n".join(out)


def _bps_report_text(data: dict[str, Any]) -> str:
    percent = "UNK" if data["percent_succeeded"] is None else data["percent_succeeded"]
    summary = _aligned(
        [[_bps_flag(data), data["bps_state"], percent, data["id"], data["owner"], data["name"]]],
        ["X", "STATE", "%S", "ID", "OPERATOR", "RUN"],
        "<<>><<",
    )
    columns = data["columns"]
    rows = [["TOTAL", *(data["total"][c] for c in columns)]]
    rows += [[item["label"], *(item["counts"][c] for c in columns)] for item in data["labels"]]
    detail = _aligned(rows, ["", *columns], "<" + ">" * len(columns), rule_after=(0,))
    return f"{summary}\n\n{detail}"


@main.command()
@click.argument("workflow_id", type=int)
@_output
def report(workflow_id: int) -> None:
    """Jobs of a workflow by task (label) and state, in the `bps report` layout."""
    _emit(_read("report", workflow_id=workflow_id), _bps_report_text)


def _jobs_text(page: dict[str, Any]) -> str:
    rows = [
        [j["id"], j["name"], j["task"], j["status"], j["queue"], f"{j['attempt']}/{j['max_attempts']}",
         j["pilot_id"], tables.when(j["started_at"]), tables.duration(j["duration_s"]),
         _error(j["error_code"], j["error_name"], j["error_diag"])]
        for j in page["jobs"]
    ]  # fmt: skip
    headers = ["ID", "NAME", "TASK", "STATUS", "QUEUE", "TRY", "PILOT", "STARTED", "TIME", "ERROR"]
    text = tables.table(rows, headers, max_width={"NAME": 30, "TASK": 20, "QUEUE": 20, "ERROR": 60})
    return _listing(page, "jobs", text)


@main.command()
@click.option("--workflow", "workflow_id", type=int, help="Only jobs of this workflow id.")
@click.option("--task", "task_id", type=int, help="Only jobs of this task id.")
@click.option(
    "--status", "statuses", multiple=True, help="Only jobs in this state (repeat, or comma-separate)."
)
@click.option("--queue", help="Only jobs of this queue.")
@click.option("--pilot", "pilot_id", type=int, help="Only jobs (last) dispatched to this pilot id.")
@click.option("--name", help="Only jobs whose name contains this.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@_output
def jobs(workflow_id, task_id, statuses, queue, pilot_id, name, limit, offset) -> None:
    """List jobs ordered by id, filtered."""
    wanted = [s.strip() for item in statuses for s in item.split(",") if s.strip()] or None
    page = _read("list_jobs", workflow_id=workflow_id, task_id=task_id, status=wanted, queue=queue,
                 pilot_id=pilot_id, name=name, limit=limit, offset=offset)  # fmt: skip
    _emit(page, _jobs_text)


def _job_text(j: dict[str, Any]) -> str:
    shape = f"{j['cores']} cores, memory {_mb(j['memory_mb'])}, walltime {tables.duration(j['walltime_s'])}"
    error = f"{j['error_code']} {j['error_name']}: {j['error_description']}" if j["error_code"] else None
    result = ("exception" if j["result_is_exception"] else "stored") if j["has_result"] else None
    head = tables.pairs([
        ("job", f"{j['id']} {j['name']}"), ("uid", j["uid"]), ("workflow", j["workflow_id"]),
        ("task", f"{j['task']} ({j['task_id']})"),
        ("status", f"{j['status']} (PanDA {j['panda_status']})"),
        ("attempt", f"{j['attempt']} of {j['max_attempts']}"),
        ("kind", j["kind"]), ("command", j["command"]),
        ("env", " ".join(f"{k}={v}" for k, v in (j["env"] or {}).items())),
        ("queue", j["queue"]), ("asks", shape), ("pilot", j["pilot_id"]), ("error", error),
        ("diagnostic", j["error_diag"]), ("exit code", j["exit_code"]),
        ("memory used", f"rss {_mb(j['max_rss_mb'])}, pss {_mb(j['max_pss_mb'])}"),
        ("created", tables.when(j["created_at"])), ("dispatched", tables.when(j["dispatched_at"])),
        ("started", tables.when(j["started_at"])), ("ended", tables.when(j["ended_at"])),
        ("duration", tables.duration(j["duration_s"])), ("result", result),
    ])  # fmt: skip
    parts = [head]
    if j["attempts"]:
        rows = [[a["attempt"], a["status"], a["pilot"] or a["pilot_id"], a["queue"],
                 tables.when(a["started_at"]), tables.duration(a["duration_s"]), a["exit_code"],
                 a["max_rss_mb"], _error(a["error_code"], a["error_name"], a["error_diag"]), a["has_log"]]
                for a in j["attempts"]]  # fmt: skip
        headers = ["TRY", "STATUS", "PILOT", "QUEUE", "STARTED", "TIME", "EXIT", "RSS MB", "ERROR", "LOG"]
        parts.append(tables.table(rows, headers, max_width={"PILOT": 30, "ERROR": 60}))
    if j["stdout_tail"]:
        lines = j["stdout_tail"].rstrip("\n").splitlines()[-10:]
        parts.append("output (last lines):\n" + "\n".join("  " + line for line in lines))
    return "\n\n".join(parts)


@main.command()
@click.argument("job_id", type=int)
@_output
def job(job_id: int) -> None:
    """Show one job with its attempt history."""
    _emit(_read("get_job", job_id=job_id), _job_text)


@main.command()
@click.argument("job_id", type=int)
@click.option("--attempt", type=click.IntRange(min=1), help="Attempt number (default: the latest).")
@_output
def logs(job_id: int, attempt: int | None) -> None:
    """Print the log of a job's latest (or given) attempt."""
    found = _read("get_log", job_id=job_id, attempt=attempt)
    if _settings().as_json:
        click.echo(json.dumps(found, indent=2))
    elif found["text"]:
        click.echo(found["text"], nl=not found["text"].endswith("\n"))
    elif not found["attempt"]:
        click.echo(f"job {job_id} has not run yet", err=True)
    else:
        click.echo(f"job {job_id} attempt {found['attempt']} left no log", err=True)


def _control_text(data: dict[str, Any]) -> str:
    done = {"cancel": "cancelled", "retry": "sent back to the queue"}[data["action"]]
    changed = data["changed"]
    lines = [f"{done}: {len(changed)} job(s) {' '.join(map(str, changed))}".rstrip() if changed
             else f"nothing to {data['action']}"]  # fmt: skip
    lines += [f"skipped job {s['id']} ({s['status']}): {s['reason']}" for s in data["skipped"]]
    return "\n".join(lines)


def _control(action: str, ids: tuple[int, ...], workflow_id: int | None, extra: int = 1) -> None:
    if _settings().db_url:
        raise click.ClickException(_NEEDS_SERVER.format(action=action))
    if bool(ids) == (workflow_id is not None):
        raise click.UsageError("give job ids or --workflow W (one of the two)")
    if action == "cancel":
        data = _remote(lambda c: c.cancel_jobs(ids) if ids else c.cancel_workflow(workflow_id))
    else:
        data = _remote(lambda c: c.retry_jobs(ids, extra) if ids else c.retry_workflow(workflow_id, extra))
    _emit(data, _control_text)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--workflow", "workflow_id", type=int, help="Cancel every job of this workflow.")
@_output
def cancel(ids: tuple[int, ...], workflow_id: int | None) -> None:
    """Cancel jobs (by id, or a whole workflow) that have not ended; running ones are killed."""
    _control("cancel", ids, workflow_id)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option(
    "--workflow", "workflow_id", type=int, help="Retry every failed or cancelled job of this workflow."
)
@click.option("--extra", default=1, show_default=True, type=click.IntRange(min=1), help="Attempts to add.")
@_output
def retry(ids: tuple[int, ...], workflow_id: int | None, extra: int) -> None:
    """Send failed or cancelled jobs (by id, or of a workflow) back to the queue."""
    _control("retry", ids, workflow_id, extra)


# ---------------------------------------------------------------- pilots, queues, errors


def _pilots_text(page: dict[str, Any]) -> str:
    rows = [[p["id"], p["name"], p["queue"], p["status"], p["host"], p["cores"], p["jobs_held"], p["n_done"],
             p["n_failed"], tables.duration(p["heartbeat_age_s"]), tables.when(p["registered_at"])]
            for p in page["pilots"]]  # fmt: skip
    headers = ["ID", "NAME", "QUEUE", "STATUS", "HOST", "CORES", "HELD", "DONE", "FAILED", "HEARTBEAT",
               "REGISTERED"]  # fmt: skip
    text = tables.table(rows, headers, max_width={"NAME": 36, "HOST": 24})
    return _listing(page, "pilots", text)


@main.command()
@click.option("--status", type=click.Choice(["active", "lost", "exited"]), help="Only pilots in this state.")
@click.option("--queue", help="Only pilots of this queue.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@_output
def pilots(status: str | None, queue: str | None, limit: int, offset: int) -> None:
    """List pilots, newest first."""
    _emit(_read("list_pilots", status=status, queue=queue, limit=limit, offset=offset), _pilots_text)


@main.command()
@_output
def queues() -> None:
    """List queues with their limits, live job and pilot counts, and each harvester's last cycle."""
    _emit(_read("list_queues"), lambda data: _queues_text(data["queues"], harvesters=True))


def _errors_text(data: dict[str, Any]) -> str:
    rows = [[e["workflow_id"], e["task"], e["error_code"], e["error_name"], e["jobs"], e["attempts"],
             e["example_diag"]] for e in data["errors"]]  # fmt: skip
    if not rows:
        return "no errors"
    headers = ["WORKFLOW", "TASK", "CODE", "NAME", "JOBS", "ATTEMPTS", "EXAMPLE"]
    return tables.table(rows, headers, max_width={"TASK": 24, "EXAMPLE": 60})


@main.command()
@click.option("--workflow", "workflow_id", type=int, help="Only errors of this workflow.")
@_output
def errors(workflow_id: int | None) -> None:
    """Errors grouped by task and error code, most frequent first."""
    _emit(_read("error_summary", workflow_id=workflow_id), _errors_text)


@main.command()
@_output
def errorcodes() -> None:
    """List the error codes of failed attempts and what each means (no server needed)."""
    from pandaflow.server.queries import error_codes

    data = {"error_codes": error_codes()}
    rows = [[e["code"], e["name"], e["retryable"], e["description"]] for e in data["error_codes"]]
    _emit(data, lambda _: tables.table(rows, ["CODE", "NAME", "RETRIED", "DESCRIPTION"], max_width=0))


# ---------------------------------------------------------------- harvester and its workers


def _harvest_db(db_url: str | None) -> str:
    """The database the harvester (and ``workers``) read: given, else the local server's."""
    url = db_url or _settings().db_url or (pf_config.server_info() or {}).get("db")
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
    from pandaflow.server.queues import QueueConfigError, load_queues

    _logging(verbose)
    engine = _open_database(_harvest_db(db_url))
    token = pf_config.load_token(_settings().token, token_file)
    if not token:
        raise click.ClickException("no token: pass --token-file, --token, or set PANDAFLOW_TOKEN")
    if zmq_endpoint is None:
        url = pf_config.server_url(server_url or _settings().server_url)
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
        _emit({q: vars(r) for q, r in reports.items()}, lambda _: _report_text(reports))
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
    parts.append(_listing(data, "workers", text))
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
@_output
def workers(db_url, queue, states, limit, offset) -> None:
    """List the pilot workers harvesters submitted, newest first, and each queue's harvester status."""
    if db_url:
        _settings().db_url = db_url
    wanted = [s.strip() for item in states for s in item.split(",") if s.strip()] or None
    _emit(_read("list_workers", queue=queue, state=wanted, limit=limit, offset=offset), _workers_text)


if __name__ == "__main__":
    main()
