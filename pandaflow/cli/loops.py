"""Loops (:mod:`pandaflow.loops`): ``loops`` lists them with their progress and best value,
``loop NAME`` shows one with its trials.

They read from ``--server``/``--db`` like every read command; with neither (and no server
running), from the databases the embedded server of each loop left in
``$PANDAFLOW_HOME/runs/loop-<name>/``, so a loop run on the embedded default can be looked at
after its driver ended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pandaflow import config as pf_config
from pandaflow import tables
from pandaflow.cli.output import emit, listing, with_json
from pandaflow.cli.root import main, settings
from pandaflow.cli.sources import read, read_database


def _run_databases() -> list[Path]:
    return sorted((pf_config.home() / "runs").glob("loop-*/pandaflow.db"))


def _local(query: str, db: Path, **kwargs: Any) -> Any:
    return read_database(str(db), query, **kwargs)


def _elsewhere() -> bool:
    """Whether a server or a database was named (or a server is running)."""
    st = settings()
    return bool(st.db_url or pf_config.server_url(st.server_url))


def _value(v: float | None) -> str:
    return tables.EMPTY if v is None else f"{v:.6g}"


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def _loops_text(page: dict[str, Any]) -> str:
    rows = [
        [
            lp["name"],
            lp["kind"],
            lp["status"],
            f"{lp['done']}/{lp['budget']}",
            f"{lp['progress']:.0%}",
            _value((lp["best"] or {}).get("value")),
            lp["owner"],
            tables.when(lp["updated_at"]),
        ]
        for lp in page["loops"]
    ]
    text = tables.table(
        rows,
        ["NAME", "KIND", "STATUS", "DONE", "PROGRESS", "BEST", "OWNER", "UPDATED"],
        max_width={"NAME": 40, "OWNER": 16},
    )
    return listing(page, "loops", text)


def _loop_text(data: dict[str, Any]) -> str:
    lp, page = data["loop"], data["trials"]
    counts = ", ".join(f"{n} {state}" for state, n in lp["counts"].items() if n) or "no trials"
    items = [
        ("loop", lp["name"]),
        ("kind", lp["kind"]),
        ("status", lp["status"] + (f" ({lp['message']})" if lp["message"] else "")),
        ("progress", f"{lp['done']}/{lp['budget']} ({lp['progress']:.0%}); {counts}"),
    ]
    if lp["direction"]:
        items.append(("direction", lp["direction"]))
    best = lp["best"]
    if best is not None:
        items.append(("best", f"{_value(best['value'])} (trial {best['number']}: {_params(best['params'])})"))
    for key, value in (lp["summary"] or {}).items():
        if key.startswith("best_"):
            continue
        items.append((key.replace("_", " "), f"{value:.4g}" if isinstance(value, float) else value))
    items += [
        ("workflow", f"{lp['workflow_id'] or tables.EMPTY} {lp['workflow']}"),
        ("started", tables.when(lp["created_at"])),
        ("ended", tables.when(lp["ended_at"])),
    ]
    rows = [
        [
            t["number"],
            t["iteration"],
            t["state"],
            _value(t["value"]),
            t["attempts"],
            _params(t["params"]),
            (t["error"].splitlines() or [""])[0],
        ]
        for t in page["trials"]
    ]
    trials = tables.table(
        rows,
        ["TRIAL", "ITER", "STATE", "VALUE", "ATTEMPTS", "PARAMS", "ERROR"],
        max_width={"PARAMS": 60, "ERROR": 50},
    )
    return f"{tables.pairs(items)}\n\n{listing(page, 'trials', trials)}"


@main.command(name="loops")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@with_json
def list_loops(limit: int, offset: int) -> None:
    """List loops (hyperparameter searches, active learning), newest first, with their progress
    and best value."""
    if _elsewhere():
        emit(read("list_loops", limit=limit, offset=offset), _loops_text)
        return
    found = [lp for db in _run_databases() for lp in _local("list_loops", db, limit=1000)["loops"]]
    found.sort(key=lambda lp: lp["updated_at"] or "", reverse=True)
    page = {"loops": found[offset : offset + limit], "total": len(found), "limit": limit, "offset": offset}
    emit(page, _loops_text)


@main.command()
@click.argument("name")
@click.option(
    "--state", type=click.Choice(["running", "complete", "failed"]), help="Only trials in this state."
)
@click.option("--best", is_flag=True, help="Best trials first (by value, in the loop's direction).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@with_json
def loop(name: str, state: str | None, best: bool, limit: int, offset: int) -> None:
    """Show one loop: its settings, progress, best trial and a table of its trials."""
    kwargs = {"state": state, "order": "value" if best else "number", "limit": limit, "offset": offset}
    if _elsewhere():
        data = {"loop": read("get_loop", name=name), "trials": read("list_trials", name=name, **kwargs)}
    else:
        db = pf_config.home() / "runs" / f"loop-{name}" / "pandaflow.db"
        if not db.is_file():
            known = ", ".join(p.parent.name[5:] for p in _run_databases()) or "none"
            raise click.ClickException(
                f"no loop {name!r}: no server is running and {db} does not exist (loops run on the embedded "
                f"default: {known}); pass --server URL or --db URL"
            )
        data = {
            "loop": _local("get_loop", db, name=name),
            "trials": _local("list_trials", db, name=name, **kwargs),
        }
    if settings().as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(_loop_text(data))
