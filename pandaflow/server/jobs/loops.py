"""The durable record of a loop (:mod:`pandaflow.loops`): its settings, its trials with their
parameters and values, and how it ended.

The driver script keeps the mathematics (an Optuna study, a Gaussian process) in memory and
writes here what it must find again after a crash: a loop is opened by name (created, or resumed
when the settings are the same), each trial is recorded with its parameters before its job is
submitted, and its outcome once known. Each function runs in the caller's transaction.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import Connection, insert, select, update

from pandaflow.server.store import schema as s

LOOP_KINDS = ("hpo", "active_learning")
TRIAL_STATES = ("running", "complete", "failed")
LOOP_STATES = ("running", "finished", "failed", "stopped")

_TRIAL_FIELDS = ("iteration", "state", "error", "attempts", "job_uid")
_L = s.loops.c
_R = s.trials.c


class LoopConflict(ValueError):
    """A request that contradicts what is recorded (another loop of the same name, a trial
    number recorded with other parameters); nothing was changed."""


class LoopMissing(LookupError):
    """No loop of that name (or no such trial)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loop_row(conn: Connection, name: str) -> Any:
    row = conn.execute(select(s.loops).where(_L.name == name)).first()
    if row is None:
        raise LoopMissing(f"no loop {name!r}; list loops with GET /loops or `pandaflow loops`")
    return row


def open_loop(
    conn: Connection,
    now: float,
    *,
    name: str,
    kind: str,
    config: dict[str, Any],
    budget: int,
    direction: str = "",
    workflow: str = "",
    owner: str = "",
) -> tuple[int, bool]:
    """Create the loop ``name``, or resume it if it exists with the same kind and settings;
    returns ``(loop id, created)``. A loop that ended is resumed too (running again): its budget
    may have been reached, in which case the driver has nothing left to do."""
    found = conn.execute(select(s.loops).where(_L.name == name)).first()
    text = _dumps(config)
    if found is not None:
        if found.kind != kind or found.config != text or found.direction != direction:
            was = json.loads(found.config)
            differ = sorted(k for k in {*was, *config} if was.get(k) != config.get(k))
            if found.kind != kind:
                differ.insert(0, "kind")
            if found.direction != direction:
                differ.append("direction")
            raise LoopConflict(
                f"a loop named {name!r} exists with other settings ({', '.join(differ)} differ): "
                "give the same settings to resume it, or another name to start a new loop"
            )
        values: dict[str, Any] = {"status": "running", "updated_at": now, "ended_at": None, "budget": budget}
        values["message"] = "resumed"
        conn.execute(update(s.loops).where(_L.id == found.id).values(**values))
        return found.id, False
    result = conn.execute(
        insert(s.loops).values(
            name=name,
            kind=kind,
            owner=owner,
            workflow=workflow or f"loop {name}",
            config=text,
            direction=direction,
            budget=budget,
            status="running",
            message="",
            created_at=now,
            updated_at=now,
        )  # fmt: skip
    )
    return result.inserted_primary_key[0], True


def _finite(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def record_trials(conn: Connection, now: float, name: str, trials: list[dict[str, Any]]) -> list[int]:
    """Insert or update trials of the loop ``name`` (each a dict with ``number`` and any of
    ``params``, ``iteration``, ``state``, ``value``, ``error``, ``attempts``, ``job_uid``); returns
    the numbers written. A number recorded with other parameters is a conflict."""
    loop = loop_row(conn, name)
    numbers = [t["number"] for t in trials]
    have = {
        r.number: r
        for r in conn.execute(select(s.trials).where(_R.loop_id == loop.id, _R.number.in_(numbers))).all()
    }
    for t in trials:
        params = t.get("params")
        old = have.get(t["number"])
        value = _finite(t.get("value"), f"trial {t['number']}: value")
        row: dict[str, Any] = {k: t[k] for k in _TRIAL_FIELDS if k in t}
        if "value" in t:
            row["value"] = value
        if row.get("state") in ("complete", "failed"):
            row["ended_at"] = now
        elif row.get("state") == "running":
            row["ended_at"] = None
        if old is None:
            if params is None:
                raise LoopConflict(f"trial {t['number']} of loop {name!r} is not recorded: give its params")
            conn.execute(
                insert(s.trials).values(
                    loop_id=loop.id,
                    number=t["number"],
                    params=_dumps(params),
                    created_at=now,
                    **{"iteration": 0, "state": "running", "error": "", "attempts": 1, **row},
                )  # fmt: skip
            )
        else:
            if params is not None and _dumps(params) != old.params:
                raise LoopConflict(
                    f"trial {t['number']} of loop {name!r} is recorded with other parameters "
                    f"({old.params}); a resumed loop must send the same ones"
                )
            if row:
                conn.execute(update(s.trials).where(_R.id == old.id).values(**row))
    conn.execute(update(s.loops).where(_L.id == loop.id).values(updated_at=now))
    return numbers


def end_loop(
    conn: Connection,
    now: float,
    name: str,
    status: str,
    message: str = "",
    summary: dict[str, Any] | None = None,
) -> None:
    """Record how the loop ended (``finished``, ``failed`` or ``stopped``) and the driver's summary."""
    loop = loop_row(conn, name)
    values: dict[str, Any] = {"status": status, "message": message, "updated_at": now, "ended_at": now}
    if summary is not None:
        values["summary"] = _dumps(summary)
    conn.execute(update(s.loops).where(_L.id == loop.id).values(**values))
