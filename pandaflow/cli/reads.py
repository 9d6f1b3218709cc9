"""Following the work: ``status``, ``workflows``, ``jobs``, ``job``, ``logs``, ``pilots``, ``errors``
and ``errorcodes``, each from a server or straight from a database (:mod:`pandaflow.cli.sources`)."""

from __future__ import annotations

import json
from typing import Any

import click

from pandaflow import tables
from pandaflow.cli.harvest import queues_text
from pandaflow.cli.output import emit, listing, with_json
from pandaflow.cli.root import main, settings
from pandaflow.cli.sources import read


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no jobs"


def _error(code: int, name: str, diag: str) -> str:
    return f"{name}: {diag}" if code else ""


def _mb(value: float | None) -> str:
    return tables.EMPTY if value is None else f"{value:g} MB"


def _summary_text(data: dict[str, Any]) -> str:
    pilots = ", ".join(f"{n} {state}" for state, n in data["pilots"].items())
    head = f"workflows: {data['workflows']}   jobs: {data['n_jobs']}   pilots: {pilots}"
    jobs = tables.table([list(data["jobs"].values())], [s.upper() for s in data["jobs"]])
    return "\n\n".join([head, jobs, queues_text(data["queues"])])


@main.command()
@with_json
def status() -> None:
    """Jobs by state, pilots and queues at a glance."""
    emit(read("summary"), _summary_text)


def _workflows_text(page: dict[str, Any]) -> str:
    rows = [[w["id"], w["name"], w["owner"], w["status"], w["n_jobs"], _counts(w["counts"]),
             tables.when(w["created_at"])] for w in page["workflows"]]  # fmt: skip
    text = tables.table(rows, ["ID", "NAME", "OWNER", "STATUS", "JOBS", "BY STATE", "CREATED"],
                        max_width={"NAME": 30, "OWNER": 16, "BY STATE": 60})  # fmt: skip
    return listing(page, "workflows", text)


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
@with_json
def workflows(workflow_id: int | None, limit: int, offset: int) -> None:
    """List workflows, newest first, or show one workflow and its tasks."""
    if workflow_id is None:
        emit(read("list_workflows", limit=limit, offset=offset), _workflows_text)
    else:
        emit(read("get_workflow", workflow_id=workflow_id), _workflow_text)


def _jobs_text(page: dict[str, Any]) -> str:
    rows = [
        [j["id"], j["name"], j["task"], j["status"], j["queue"], f"{j['attempt']}/{j['max_attempts']}",
         j["pilot_id"], tables.when(j["started_at"]), tables.duration(j["duration_s"]),
         _error(j["error_code"], j["error_name"], j["error_diag"])]
        for j in page["jobs"]
    ]  # fmt: skip
    headers = ["ID", "NAME", "TASK", "STATUS", "QUEUE", "TRY", "PILOT", "STARTED", "TIME", "ERROR"]
    text = tables.table(rows, headers, max_width={"NAME": 30, "TASK": 20, "QUEUE": 20, "ERROR": 60})
    return listing(page, "jobs", text)


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
@with_json
def jobs(workflow_id, task_id, statuses, queue, pilot_id, name, limit, offset) -> None:
    """List jobs ordered by id, filtered."""
    wanted = [s.strip() for item in statuses for s in item.split(",") if s.strip()] or None
    page = read("list_jobs", workflow_id=workflow_id, task_id=task_id, status=wanted, queue=queue,
                 pilot_id=pilot_id, name=name, limit=limit, offset=offset)  # fmt: skip
    emit(page, _jobs_text)


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
    if j.get("events"):
        rows = [[tables.when(e["at"], precise=True), e["event"], f"{e['from'] or ''} -> {e['to']}".lstrip(),
                 e["attempt"] or "", e["pilot"] or e["pilot_id"] or "", e["reason"]]
                for e in j["events"]]  # fmt: skip
        headers = ["WHEN", "EVENT", "STATE", "TRY", "PILOT", "REASON"]
        parts.append("timeline:\n" + tables.table(rows, headers, max_width={"PILOT": 30, "REASON": 70}))
    if j["stdout_tail"]:
        lines = j["stdout_tail"].rstrip("\n").splitlines()[-10:]
        parts.append("output (last lines):\n" + "\n".join("  " + line for line in lines))
    return "\n\n".join(parts)


@main.command()
@click.argument("job_id", type=int)
@with_json
def job(job_id: int) -> None:
    """Show one job: what it asks, its attempts and its timeline (every change of its state)."""
    found = read("get_job", job_id=job_id)
    found["events"] = read("job_events", job_id=job_id)["events"]
    emit(found, _job_text)


@main.command()
@click.argument("job_id", type=int)
@click.option("--attempt", type=click.IntRange(min=1), help="Attempt number (default: the latest).")
@with_json
def logs(job_id: int, attempt: int | None) -> None:
    """Print the log of a job's latest (or given) attempt."""
    found = read("get_log", job_id=job_id, attempt=attempt)
    if settings().as_json:
        click.echo(json.dumps(found, indent=2))
    elif found["text"]:
        click.echo(found["text"], nl=not found["text"].endswith("\n"))
    elif not found["attempt"]:
        click.echo(f"job {job_id} has not run yet", err=True)
    else:
        click.echo(f"job {job_id} attempt {found['attempt']} left no log", err=True)


def _pilots_text(page: dict[str, Any]) -> str:
    rows = [[p["id"], p["name"], p["queue"], p["status"], p["host"], p["cores"], p["jobs_held"], p["n_done"],
             p["n_failed"], tables.duration(p["heartbeat_age_s"]), tables.when(p["registered_at"])]
            for p in page["pilots"]]  # fmt: skip
    headers = ["ID", "NAME", "QUEUE", "STATUS", "HOST", "CORES", "HELD", "DONE", "FAILED", "HEARTBEAT",
               "REGISTERED"]  # fmt: skip
    text = tables.table(rows, headers, max_width={"NAME": 36, "HOST": 24})
    return listing(page, "pilots", text)


@main.command()
@click.option("--status", type=click.Choice(["active", "lost", "exited"]), help="Only pilots in this state.")
@click.option("--queue", help="Only pilots of this queue.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@with_json
def pilots(status: str | None, queue: str | None, limit: int, offset: int) -> None:
    """List pilots, newest first."""
    emit(read("list_pilots", status=status, queue=queue, limit=limit, offset=offset), _pilots_text)


def _errors_text(data: dict[str, Any]) -> str:
    rows = [[e["workflow_id"], e["task"], e["error_code"], e["error_name"], e["jobs"], e["attempts"],
             e["example_diag"]] for e in data["errors"]]  # fmt: skip
    if not rows:
        return "no errors"
    headers = ["WORKFLOW", "TASK", "CODE", "NAME", "JOBS", "ATTEMPTS", "EXAMPLE"]
    return tables.table(rows, headers, max_width={"TASK": 24, "EXAMPLE": 60})


@main.command()
@click.option("--workflow", "workflow_id", type=int, help="Only errors of this workflow.")
@with_json
def errors(workflow_id: int | None) -> None:
    """Errors grouped by task and error code, most frequent first."""
    emit(read("error_summary", workflow_id=workflow_id), _errors_text)


@main.command()
@with_json
def errorcodes() -> None:
    """List the error codes of failed attempts and what each means (no server needed)."""
    from pandaflow.server.front.queries import error_codes

    data = {"error_codes": error_codes()}
    rows = [[e["code"], e["name"], e["retryable"], e["description"]] for e in data["error_codes"]]
    emit(data, lambda _: tables.table(rows, ["CODE", "NAME", "RETRIED", "DESCRIPTION"], max_width=0))
