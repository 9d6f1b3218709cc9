"""Controlling the work: commands that change job states, which only a running server may do
(its dispatcher kills jobs on pilots, tells executors and dispatches what comes back).

``cancel`` and ``retry`` share :func:`_control`; another state change (hold, release) is one more
action there, one more line in :func:`_control_text` and one more command below."""

from __future__ import annotations

from typing import Any

import click

from pandaflow.cli.output import emit, with_json
from pandaflow.cli.root import main, settings
from pandaflow.cli.sources import remote

_NEEDS_SERVER = (
    "{action} needs a running server: it changes job states that the server's dispatcher must act on "
    "(killing jobs on pilots, telling executors, dispatching retried jobs). Drop --db and start "
    "`pandaflow server` (or pass --server URL)"
)


def _control_text(data: dict[str, Any]) -> str:
    done = {"cancel": "cancelled", "retry": "sent back to the queue"}[data["action"]]
    changed = data["changed"]
    lines = [f"{done}: {len(changed)} job(s) {' '.join(map(str, changed))}".rstrip() if changed
             else f"nothing to {data['action']}"]  # fmt: skip
    lines += [f"skipped job {s['id']} ({s['status']}): {s['reason']}" for s in data["skipped"]]
    return "\n".join(lines)


def _control(action: str, ids: tuple[int, ...], workflow_id: int | None, extra: int = 1) -> None:
    if settings().db_url:
        raise click.ClickException(_NEEDS_SERVER.format(action=action))
    if bool(ids) == (workflow_id is not None):
        raise click.UsageError("give job ids or --workflow W (one of the two)")
    if action == "cancel":
        data = remote(lambda c: c.cancel_jobs(ids) if ids else c.cancel_workflow(workflow_id))
    else:
        data = remote(lambda c: c.retry_jobs(ids, extra) if ids else c.retry_workflow(workflow_id, extra))
    emit(data, _control_text)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--workflow", "workflow_id", type=int, help="Cancel every job of this workflow.")
@with_json
def cancel(ids: tuple[int, ...], workflow_id: int | None) -> None:
    """Cancel jobs (by id, or a whole workflow) that have not ended; running ones are killed."""
    _control("cancel", ids, workflow_id)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option(
    "--workflow", "workflow_id", type=int, help="Retry every failed or cancelled job of this workflow."
)
@click.option("--extra", default=1, show_default=True, type=click.IntRange(min=1), help="Attempts to add.")
@with_json
def retry(ids: tuple[int, ...], workflow_id: int | None, extra: int) -> None:
    """Send failed or cancelled jobs (by id, or of a workflow) back to the queue."""
    _control("retry", ids, workflow_id, extra)
