"""DAG files: ``pandaflow submit FILE`` (validated here, stored by the server) and
``pandaflow report WORKFLOW`` (per-label counts in the ``bps report`` layout)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from pandaflow import tables
from pandaflow.cli.output import emit, with_json
from pandaflow.cli.root import main, settings
from pandaflow.cli.sources import read, remote

if TYPE_CHECKING:
    from pandaflow.client import Client
    from pandaflow.dagfile import DagFile


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


def load_dag(dag_file: str, exit_code: int = 1) -> DagFile:
    """The validated DAG file; an invalid one is a usage error (exit status ``exit_code``) listing
    every problem, each naming the file and the key (``pandaflow submit`` and ``pandaflow run``)."""
    from pandaflow import dagfile

    try:
        return dagfile.load(dag_file)
    except dagfile.DagFileError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = exit_code
        raise error from None


def send(client: Client, dag: DagFile, owner: str | None) -> dict[str, Any]:
    """Submit the DAG file's workflow to the client's server; returns the server's answer."""
    body = dag.body
    return client.submit(
        body["name"], body["jobs"], owner=_owner(owner or dag.owner), available=dag.available,
        sites=dag.sites, site=dag.site,
    )  # fmt: skip


def submitted_lines(dag: DagFile, sent: dict[str, Any]) -> list[str]:
    """What the server stored of a submitted DAG file: the workflow id, its jobs, those ready now."""
    lines = [
        f"submitted workflow {sent['workflow_id']} {dag.name!r}: {len(sent['job_ids'])} job(s) in "
        f"{len(dag.labels)} task(s), {len(dag.roots())} ready now, the others wait for their inputs"
    ]
    if sent["duplicates"]:
        lines.append(f"{len(sent['duplicates'])} job(s) had been submitted before and were kept as they were")
    if sent.get("sites"):
        lines.append("jobs per site: " + ", ".join(f"{site} {n}" for site, n in sent["sites"].items()))
    return lines


@main.command()
@click.argument("dag_file", type=click.Path(dir_okay=False))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the file and print the jobs per task and the roots; submit nothing.",
)
@click.option("--owner", default=None, help="Owner of the workflow (default: the file's 'owner', else you).")
@with_json
def submit(dag_file: str, dry_run: bool, owner: str | None) -> None:
    """Submit a DAG file (JSON or YAML; see docs/dag.md) as one workflow.

    The file is validated here first (errors name the file and the key), then sent to the
    server, which stores every job or none.
    """
    if settings().db_url and not dry_run:
        raise click.ClickException(
            "submit needs a running server: it brokers the jobs to queues and its dispatcher hands them "
            "to pilots, so a database alone cannot take them. Drop --db and start `pandaflow server` "
            "(or pass --server URL); `pandaflow submit --dry-run FILE` checks a file without one"
        )
    dag = load_dag(dag_file)
    if dry_run:
        emit(dag.plan(), _plan_text)
        return
    sent = remote(lambda c: send(c, dag, owner))
    wid = sent["workflow_id"]

    def text(data: dict[str, Any]) -> str:
        lines = submitted_lines(dag, data)
        lines.append(f"follow it with:  pandaflow report {wid}")
        lines.append(f"                 pandaflow jobs --workflow {wid}")
        lines.append(f"cancel it with:  pandaflow cancel --workflow {wid}")
        return "\n".join(lines)

    emit(sent, text)


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


def report_text(data: dict[str, Any]) -> str:
    """A workflow's report (``queries.report``) as ``pandaflow report`` prints it."""
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
@click.option(
    "--wait", is_flag=True,
    help="Wait until every job of the workflow has ended, then print the report; the exit status is "
    "0 if the run SUCCEEDED, 1 if not.",
)  # fmt: skip
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
    help="With --wait: stop waiting after this long (exit status 2).",
)  # fmt: skip
@with_json
def report(workflow_id: int, wait: bool, timeout: float | None) -> None:
    """Jobs of a workflow by task (label) and state, in the `bps report` layout."""
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    data = read("report", workflow_id=workflow_id)
    if wait:
        data = _wait_for_end(workflow_id, data, timeout)
    emit(data, report_text)
    if wait and data["bps_state"] != "SUCCEEDED":
        raise SystemExit(2 if data["bps_state"] == "RUNNING" else 1)


def _wait_for_end(workflow_id: int, data: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Poll the report (once a second, then every 2 s) until the run is no longer RUNNING."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.25
    while data["bps_state"] == "RUNNING":
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"workflow {workflow_id} still running after {timeout:g} s", err=True)
            break
        time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
        pause = min(pause * 2, 2.0)
        data = read("report", workflow_id=workflow_id)
    return data
