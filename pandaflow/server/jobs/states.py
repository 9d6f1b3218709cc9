"""Job states, the transitions table, and the one writer of ``jobs.status``.

Every change of a job's state is an *event* (``dispatch``, ``finish``, ``hold``, ...) looked up
in :data:`TRANSITIONS`, in the style of dask.distributed's scheduler: the event names the states
it may start from, the state it leads to, and exactly which columns it sets and clears (a user
retry clears the last attempt's error, pilot and times and grants attempts; a dispatch
increments the attempt; a job a lost pilot never started gets its attempt back).
:func:`apply` is the only code that writes ``jobs.status``: one guarded, set-based UPDATE per
group of jobs (``... WHERE id IN (...) AND status = <the state it was read in>``), the job
history (``job_events``) appended in bulk in the same transaction, and the follow-ups
(clients to notify, queues that got ready work, pilots to kill, dependencies to release or
prune) handed back to the caller, which runs them (:func:`pandaflow.server.jobs.dag.follow`).

Callers read the rows they move in the same transaction, after taking the write lock
(:func:`pandaflow.server.store.statements.claim_writes`; ``FOR UPDATE`` on PostgreSQL), so what they
read is what the guard finds; a row that moved meanwhile anyway is a bug and rolls the whole
transaction back (:class:`StaleState`) rather than half-apply it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from pandaflow import protocol
from pandaflow.server.store.statements import Sql, chunks, claim_writes, insert_sql, marks

PENDING = "pending"
READY = "ready"
RESERVED = "reserved"
DISPATCHED = "dispatched"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
PRUNED = "pruned"
HELD = "held"

ALL_STATES = (PENDING, READY, RESERVED, DISPATCHED, RUNNING, FINISHED, FAILED, CANCELLED, PRUNED, HELD)
FINAL_STATES = frozenset({FINISHED, FAILED, CANCELLED, PRUNED})
ACTIVE_STATES = frozenset({DISPATCHED, RUNNING})  # a pilot holds the job
WAITING_STATES = frozenset({PENDING, READY, RESERVED})  # not started, not ended, not held

# pandaflow state -> (PanDA job status, BPS WmsStates name)
EXTERNAL_NAMES: dict[str, tuple[str, str]] = {
    PENDING: ("defined", "UNREADY"),
    READY: ("activated", "READY"),
    # Push queues: held for the harvester worker submitted for it (PanDA: picked up by Harvester,
    # the worker is on its way); for BPS it waits in a batch queue, like a dispatched job.
    RESERVED: ("starting", "PENDING"),
    DISPATCHED: ("sent", "PENDING"),
    RUNNING: ("running", "RUNNING"),
    FINISHED: ("finished", "SUCCEEDED"),
    FAILED: ("failed", "FAILED"),
    CANCELLED: ("cancelled", "DELETED"),
    PRUNED: ("missing", "PRUNED"),
    HELD: ("holding", "HELD"),
}

# What an ended attempt leaves on the job (its outcome, as a pilot reports it).
OUTCOME_FIELDS = frozenset(
    {
        "error_code",
        "error_diag",
        "exit_code",
        "stdout_tail",
        "max_rss_mb",
        "max_pss_mb",
        "started_at",
        "ended_at",
    }
)
# Fixed assignments: (column, SQL expression with ``?`` placeholders, the parameters they take:
# ``now`` (the time of the change) or ``extra`` (the extra_attempts of a retry)).
Fixed = tuple[str, str, tuple[str, ...]]


def _set(column: str, expression: str = "NULL", *params: str) -> Fixed:
    return (column, expression, params)


# A job that starts over (user retry, revival, re-run of an 'always' job) keeps nothing of its
# last attempt but the attempt count: the attempts table and the job history keep the rest.
_FRESH = (
    _set("error_code", "0"),
    _set("error_diag", "''"),
    _set("exit_code"),
    _set("pilot_id"),
    _set("worker_id"),
    _set("dispatched_at"),
    _set("started_at"),
    _set("ended_at"),
    _set("stdout_tail", "''"),
    _set("max_rss_mb"),
    _set("max_pss_mb"),
    # ... and gets at least ``extra_attempts`` more attempts than it used.
    _set(
        "max_attempts",
        "CASE WHEN attempt + ? > max_attempts THEN attempt + ? ELSE max_attempts END",
        "extra",
        "extra",
    ),
)


@dataclass(frozen=True, slots=True)
class Transition:
    """One event of the table: from which states, to which, and the columns it writes.

    ``owns`` are the columns the caller gives values for (the same for every job or per job);
    ``fixed`` are SQL assignments the event always makes (see :data:`Fixed`).
    """

    event: str
    sources: frozenset[str]
    target: str
    owns: frozenset[str] = frozenset()
    fixed: tuple[Fixed, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        clash = self.owns & {c for c, _e, _p in self.fixed}
        assert not clash, f"{self.event}: {sorted(clash)} both owned and fixed"

    @property
    def writes(self) -> frozenset[str]:
        """Every column the event may write besides ``status`` and ``updated_at``."""
        return self.owns | {c for c, _e, _p in self.fixed}


def _t(event: str, sources: Iterable[str], target: str, doc: str, owns=(), fixed=()) -> Transition:
    return Transition(event, frozenset(sources), target, frozenset(owns), tuple(fixed), doc)


TRANSITIONS: dict[str, Transition] = {
    t.event: t
    for t in (
        _t("release", [PENDING], READY, "every input is available"),
        _t("reserve", [READY], RESERVED, "push queue: kept for one harvester worker's pilot",
           owns=["worker_id"]),
        _t("unreserve", [RESERVED], READY, "the worker ended without taking it", fixed=[_set("worker_id")]),
        _t("dispatch", [READY, RESERVED], DISPATCHED, "handed to a pilot: a new attempt",
           owns=["pilot_id"],
           fixed=[_set("attempt", "attempt + 1"), _set("dispatched_at", "?", "now"), _set("started_at"),
                  _set("ended_at")]),
        _t("start", [DISPATCHED], RUNNING, "the pilot started the payload", owns=["started_at"]),
        _t("finish", [DISPATCHED, RUNNING], FINISHED, "the attempt succeeded", owns=OUTCOME_FIELDS),
        _t("fail", [DISPATCHED, RUNNING], FAILED, "the attempt failed and no retry is left or allowed",
           owns=OUTCOME_FIELDS),
        _t("retry", [DISPATCHED, RUNNING], READY,
           "the attempt failed, attempts are left: back to the queue (after an out-of-memory kill with"
           " a larger memory request, possibly on another queue)",
           owns=(OUTCOME_FIELDS - {"started_at", "ended_at"}) | {"memory_mb", "queue"},
           fixed=[_set("pilot_id"), _set("worker_id"), _set("started_at"), _set("ended_at")]),
        _t("return", [DISPATCHED], READY,
           "the pilot never started it (lost, drained, or gave it to a free pilot): its attempt is given"
           " back",
           fixed=[_set("attempt", "attempt - 1"), _set("pilot_id"), _set("worker_id"), _set("dispatched_at"),
                  _set("started_at"), _set("ended_at")]),
        _t("cancel", [PENDING, READY, RESERVED, DISPATCHED, RUNNING, HELD], CANCELLED, "cancelled by a user",
           owns=["error_code", "error_diag"], fixed=[_set("ended_at", "?", "now")]),
        _t("prune", [PENDING, READY], PRUNED, "an input can never exist", owns=["error_diag"]),
        _t("hold", [PENDING, READY, RESERVED], HELD, "paused: neither dispatched nor pruned",
           fixed=[_set("worker_id")]),
        _t("unhold", [HELD], PENDING, "released from hold: waits for its inputs again, or is ready"),
        _t("resubmit", [FAILED, CANCELLED], PENDING, "retried by a user", fixed=_FRESH),
        _t("revive", [PRUNED], PENDING, "the input it lacked will be produced after all (its producer is"
           " retried)", fixed=_FRESH),
        _t("rerun", [FINISHED, FAILED], PENDING, "an 'always' job whose inputs are re-run runs again",
           fixed=_FRESH),
    )
}  # fmt: skip

EVENTS = tuple(TRANSITIONS)


class IllegalTransition(RuntimeError):
    """A state change that the transitions table does not allow."""

    def __init__(self, job_id: Any, old: str, event: str):
        target = TRANSITIONS[event].target if event in TRANSITIONS else "?"
        super().__init__(f"job {job_id}: illegal transition {old!r} -> {target!r} ({event})")
        self.job_id, self.old, self.event = job_id, old, event


class StaleState(RuntimeError):
    """A job was not in the state it was read in: the transaction must be rolled back."""


def allowed(status: str, event: str) -> bool:
    """True when a job in ``status`` may take ``event``."""
    return status in TRANSITIONS[event].sources


def allowed_sources(target: str) -> frozenset[str]:
    """The states from which some event leads to ``target``."""
    return frozenset(s for t in TRANSITIONS.values() if t.target == target for s in t.sources)


def result_entry(
    job: Mapping[str, Any], status: str, error_code: int = 0, error_diag: str = "",
    result: bytes | None = None, exc: bool = False,
) -> protocol.Result:  # fmt: skip
    """What a submitting client is told of a job that ended (an entry of the ``results`` message)."""
    return protocol.Result(job_id=job["id"], uid=job["uid"], status=status, error_code=int(error_code or 0),
                           error_diag=error_diag or "", result=result, is_exception=bool(exc))  # fmt: skip


@dataclass(slots=True)
class Effects:
    """Follow-ups of state changes that reach outside the database, gathered for the caller
    to send once the transaction committed."""

    notify: dict[str, list[protocol.Result]] = field(default_factory=lambda: defaultdict(list))
    queues: set[str] = field(default_factory=set)  # queues that got ready jobs (wake the dispatcher)
    kill: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # pilot id -> job ids

    def merge(self, other: Effects) -> None:
        for client, entries in other.notify.items():
            self.notify[client].extend(entries)
        self.queues |= other.queues
        for pilot, ids in other.kill.items():
            self.kill[pilot].extend(ids)


@dataclass(slots=True)
class Applied:
    """What one :func:`apply` moved: ``moved`` rows (as read, with ``from`` the state they left
    and ``attempt`` the attempt after the move), ``skipped`` rows the event does not apply to,
    and ``entries`` the client notifications made, by job id (callers add result payloads)."""

    event: str
    target: str
    moved: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    entries: dict[int, protocol.Result] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [row["id"] for row in self.moved]


_EVENT_COLUMNS = ("job_id", "attempt", "from_status", "to_status", "event", "at", "pilot_id", "reason")
REASON_LIMIT = 500


def apply(
    conn: Connection,
    event: str,
    rows: Iterable[Mapping[str, Any]],
    now: float,
    *,
    each: Mapping[int, Mapping[str, Any]] | None = None,
    reason: str | Mapping[int, str] = "",
    strict: bool = True,
    effects: Effects | None = None,
    extra_attempts: int = 1,
    **values: Any,
) -> Applied:
    """Move the jobs ``rows`` (mappings with at least ``id``, ``status`` and ``attempt``, read in
    this transaction) by ``event``, writing exactly the columns the event owns.

    ``values`` are owned columns with one value for all jobs, ``each`` per-job owned columns
    (``{job_id: {column: value}}``), ``reason`` the history's reason (one, or per job). Rows
    whose state the event cannot start from raise :class:`IllegalTransition`, or with
    ``strict=False`` are returned in ``skipped``. With ``effects``, the follow-ups that leave
    the database are added to it: result entries for the clients of jobs that ended (rows with
    ``client`` and ``uid``), queues that got ready jobs (rows' ``queue``, or the ``queue`` the
    move sets), pilots to kill for cancelled active jobs (rows' ``pilot_id``).
    """
    spec = TRANSITIONS[event]
    out = Applied(event, spec.target)
    rows = list(rows)
    given = set(values)
    unknown = given - spec.owns
    if each:  # only the entries of the rows moved here: a caller may share one map between events
        for row in rows:
            unknown |= set(each.get(row["id"], ())) - spec.owns
    if unknown:
        raise ValueError(f"event {event!r} does not own column(s) {sorted(unknown)}")
    groups: dict[tuple[str, tuple[str, ...]], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        status = row["status"]
        if status not in spec.sources:
            if strict:
                raise IllegalTransition(row.get("id"), status, event)
            out.skipped.append(dict(row))
            continue
        keys = tuple(sorted(each[row["id"]])) if each and row["id"] in each else ()
        groups[(status, keys)].append(row)
    if not groups:
        return out
    claim_writes(conn)
    sql = Sql(conn)
    history: list[tuple] = []
    fixed_sql, fixed_params = _fixed(spec, now, extra_attempts)
    uniform = sorted(given)
    for (status, keys), members in groups.items():
        sets = ["status=?", "updated_at=?", *fixed_sql, *(f"{c}=?" for c in uniform)]
        head = [spec.target, now, *fixed_params, *(values[c] for c in uniform)]
        if keys:
            statement = (
                f"UPDATE jobs SET {', '.join([*sets, *(f'{c}=?' for c in keys)])} WHERE id=? AND status=?"
            )
            params = [(*head, *(each[r["id"]][c] for c in keys), r["id"], status) for r in members]  # type: ignore[index]
            before = sql.cur.rowcount
            sql.many(statement, params)
            count = sql.cur.rowcount if sql.cur.rowcount is not None else before
            if count != len(members):
                raise StaleState(
                    f"{event}: {len(members) - count} of {len(members)} jobs were no longer {status!r}"
                )
            moved_rows = members
        else:
            moved_ids: set[int] = set()
            for part in chunks([r["id"] for r in members]):
                statement = (
                    f"UPDATE {sql.by_id('jobs')} SET {', '.join(sets)} WHERE id IN ({marks(len(part))})"
                    " AND status=? RETURNING id"
                )
                moved_ids.update(r[0] for r in sql.rows(statement, (*head, *part, status)))
            if strict and len(moved_ids) != len(members):
                lost = len(members) - len(moved_ids)
                raise StaleState(f"{event}: {lost} of {len(members)} jobs were no longer {status!r}")
            moved_rows = [r for r in members if r["id"] in moved_ids]
            out.skipped.extend(dict(r) for r in members if r["id"] not in moved_ids)
        for row in moved_rows:
            moved = dict(row)
            moved["from"] = status
            moved["status"] = spec.target
            if event == "dispatch":
                moved["attempt"] = row["attempt"] + 1
            elif event == "return":
                moved["attempt"] = row["attempt"] - 1
            per = each.get(row["id"], {}) if each else {}
            moved.update(values)
            moved.update(per)
            out.moved.append(moved)
            why = reason.get(row["id"], "") if isinstance(reason, Mapping) else reason
            pilot = moved.get("pilot_id") if event == "dispatch" else row.get("pilot_id")
            history.append(
                (row["id"], moved["attempt"] if event == "dispatch" else row["attempt"], status, spec.target,
                 event, now, pilot, (why or "")[:REASON_LIMIT])
            )  # fmt: skip
    sql.many(insert_sql("job_events", _EVENT_COLUMNS), history)
    if effects is not None:
        _effects(out, effects)
    return out


def _fixed(spec: Transition, now: float, extra: int) -> tuple[list[str], list[Any]]:
    """The event's fixed assignments as ``col=expr`` with ``?`` placeholders, and their values."""
    bound = {"now": now, "extra": int(extra)}
    sets, params = [], []
    for column, expression, names in spec.fixed:
        sets.append(f"{column}={expression}")
        params.extend(bound[n] for n in names)
    return sets, params


def _effects(applied: Applied, fx: Effects) -> None:
    target = applied.target
    for row in applied.moved:
        if target == READY and row.get("queue"):
            fx.queues.add(row["queue"])
        if target in FINAL_STATES and row.get("client") and "uid" in row:
            entry = result_entry(row, target, row.get("error_code") or 0, row.get("error_diag") or "")
            applied.entries[row["id"]] = entry
            fx.notify[row["client"]].append(entry)
        if target == CANCELLED and row["from"] in ACTIVE_STATES and row.get("pilot_id") is not None:
            fx.kill[row["pilot_id"]].append(row["id"])


def history(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    """The job's events, oldest first (its creation is the job row itself)."""
    return Sql(conn).maps(
        "SELECT id, job_id, attempt, from_status, to_status, event, at, pilot_id, reason FROM job_events"
        " WHERE job_id=? ORDER BY id",
        (job_id,),
    )


def returns(conn: Connection, job_ids: list[int]) -> dict[int, int]:
    """How many times each job was given back unstarted (``return`` events)."""
    sql = Sql(conn)
    counts: dict[int, int] = {}
    for part in chunks(job_ids):
        for job_id, n in sql.rows(
            f"SELECT job_id, COUNT(*) FROM job_events WHERE event='return' AND job_id IN ({marks(len(part))})"
            " GROUP BY job_id",
            part,
        ):
            counts[job_id] = int(n)
    return counts
