"""DAG files: ``pandaflow submit FILE`` (validated here, stored by the server) and
``pandaflow report WORKFLOW`` (per-label counts in the ``bps report`` layout)."""

from __future__ import annotations

from typing import Any

import click

from pandaflow import tables
from pandaflow.cli.output import emit, with_json
from pandaflow.cli.root import main, settings
from pandaflow.cli.sources import read, remote


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
@with_json
def submit(dag_file: str, dry_run: bool, owner: str | None) -> None:
    """Submit a DAG file (JSON or YAML; see docs/dag.md) as one workflow.

    The file is validated here first (errors name the file and the key), then sent to the
    server, which stores every job or none.
    """
    from pandaflow import dagfile

    if settings().db_url and not dry_run:
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
        emit(dag.plan(), _plan_text)
        return
    body = dag.body
    sent = remote(
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
@with_json
def report(workflow_id: int) -> None:
    """Jobs of a workflow by task (label) and state, in the `bps report` layout."""
    emit(read("report", workflow_id=workflow_id), _bps_report_text)
