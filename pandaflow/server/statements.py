"""Prebuilt SQL statements for the hot path.

SQLAlchemy memoizes a statement's cache key on the statement object, so building each hot
statement once (with bind parameters, ``expanding`` ones for ``IN`` lists) and reusing it
skips expression construction and cache-key generation on every call.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import Update, bindparam, update

from pandaflow.server import schema as s

_J = s.jobs.c


@cache
def update_jobs(
    columns: tuple[str, ...], guard_attempt: bool = True, guard_status: str | None = None
) -> Update:
    """``UPDATE jobs SET <columns> WHERE id = :_id [AND attempt = :_attempt] [AND status = guard]``
    for executemany with one parameter map per job."""
    stmt = update(s.jobs).where(_J.id == bindparam("_id"))
    if guard_attempt:
        stmt = stmt.where(_J.attempt == bindparam("_attempt"))
    if guard_status is not None:
        stmt = stmt.where(_J.status == guard_status)
    return stmt.values({k: bindparam(k) for k in columns})


def ids_param(name: str = "ids"):
    return bindparam(name, expanding=True)
