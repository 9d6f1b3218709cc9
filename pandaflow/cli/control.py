"""Controlling the work: commands that change job states, which only a running server may do
(its dispatcher kills jobs on pilots, tells executors and dispatches what comes back).

``cancel``, ``retry``, ``hold`` and ``release`` share :func:`_control`: by job ids, a whole
workflow, or one task (label) of a workflow."""

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


_DONE = {
    "cancel": "cancelled",
    "retry": "sent back to the queue",
    "hold": "held",
    "release": "released",
}


def _control_text(data: dict[str, Any]) -> str:
    done = _DONE[data["action"]]
    changed = data["changed"]
    lines = [f"{done}: {len(changed)} job(s) {' '.join(map(str, changed))}".rstrip() if changed
             else f"nothing to {data['action']}"]  # fmt: skip
    lines += [f"skipped job {s['id']} ({s['status']}): {s['reason']}" for s in data["skipped"]]
    return "\n".join(lines)


def _control(
    action: str, ids: tuple[int, ...], workflow_id: int | None, task: str | None = None, extra: int = 1
) -> None:
    if settings().db_url:
        raise click.ClickException(_NEEDS_SERVER.format(action=action))
    if bool(ids) == (workflow_id is not None):
        raise click.UsageError("give job ids or --workflow W (one of the two)")
    if task is not None and workflow_id is None:
        raise click.UsageError("--task names a task of a workflow: give --workflow W too")
    more = {"extra_attempts": extra} if action == "retry" else {}

    def call(c):
        if ids:
            return getattr(c, f"{action}_jobs")(ids, **more)
        return getattr(c, f"{action}_workflow")(workflow_id, task=task, **more)

    emit(remote(call), _control_text)


def _task_option(verb: str):
    return click.option("--task", help=f"With --workflow: {verb} only the jobs of this task (label).")


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--workflow", "workflow_id", type=int, help="Cancel every job of this workflow.")
@_task_option("cancel")
@with_json
def cancel(ids: tuple[int, ...], workflow_id: int | None, task: str | None) -> None:
    """Cancel jobs (by id, a whole workflow, or a task) that have not ended; running ones are killed."""
    _control("cancel", ids, workflow_id, task)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option(
    "--workflow", "workflow_id", type=int, help="Retry every failed or cancelled job of this workflow."
)
@_task_option("retry")
@click.option("--extra", default=1, show_default=True, type=click.IntRange(min=1), help="Attempts to add.")
@with_json
def retry(ids: tuple[int, ...], workflow_id: int | None, task: str | None, extra: int) -> None:
    """Send failed or cancelled jobs (by id, of a workflow, or of a task) back to the queue, with
    what their failure pruned downstream."""
    _control("retry", ids, workflow_id, task, extra)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--workflow", "workflow_id", type=int, help="Hold every waiting job of this workflow.")
@_task_option("hold")
@with_json
def hold(ids: tuple[int, ...], workflow_id: int | None, task: str | None) -> None:
    """Hold waiting jobs (by id, of a workflow, or of a task): they are neither dispatched nor
    pruned until released; jobs already on a pilot run to their end."""
    _control("hold", ids, workflow_id, task)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--workflow", "workflow_id", type=int, help="Release every held job of this workflow.")
@_task_option("release")
@with_json
def release(ids: tuple[int, ...], workflow_id: int | None, task: str | None) -> None:
    """Release held jobs back to where they were: ready, or pending while inputs are missing."""
    _control("release", ids, workflow_id, task)
