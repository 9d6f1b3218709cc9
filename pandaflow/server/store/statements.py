"""Hot-path SQL, run directly on the DBAPI cursor of a SQLAlchemy connection.

Building and compiling a SQLAlchemy statement costs tens of microseconds per call, twenty
times what SQLite needs to run it; the dispatcher issues a handful per job, so the statements
on its path are plain SQL text, written once, valid on SQLite and PostgreSQL, and executed in
the caller's SQLAlchemy transaction (same connection, same commit). Everything else (REST
queries, migrations) keeps using SQLAlchemy expressions.

Placeholders are written ``?`` and turned into ``%s`` for psycopg.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection


class Sql:
    """A cursor on the connection's DBAPI connection, speaking one placeholder style."""

    __slots__ = ("conn", "cur", "pg")

    def __init__(self, conn: Connection):
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"
        self.cur = conn.connection.dbapi_connection.cursor()

    def by_id(self, table: str) -> str:
        """``table`` for a statement that picks rows by primary key among others (``id IN (...)
        AND status=?``): on SQLite, which keeps no statistics, the planner would otherwise walk
        the status index over every row in that state (all the pending jobs of a large DAG)."""
        return table if self.pg else f"{table} NOT INDEXED"

    def run(self, text: str, params: Sequence[Any] = ()) -> Any:
        self.cur.execute(_style(text, self.pg), params)
        return self.cur

    def many(self, text: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self.cur.executemany(_style(text, self.pg), rows)

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        self.cur.execute(_style(text, self.pg), params)
        return self.cur.fetchall()

    def maps(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.cur.execute(_style(text, self.pg), params)
        names = [d[0] for d in self.cur.description]
        return [dict(zip(names, row, strict=True)) for row in self.cur.fetchall()]


def claim_writes(conn: Connection) -> None:
    """Take SQLite's write lock now, at the start of a transaction that reads and then writes.

    The sqlite3 module begins a transaction only at the first INSERT/UPDATE/DELETE, so the
    reads before it see the database as committed at *their* time: a writer committing in
    between (the dispatcher finishing a producer while a piece of its workflow is stored) is
    missed, and a job waits for a product that became available unseen. With the lock taken
    first, the transaction's reads are the latest and no one commits before it does. On
    PostgreSQL the callers lock the rows they read instead (``FOR UPDATE``/``FOR SHARE``).
    """
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite" and not dbapi.in_transaction:
        dbapi.execute("BEGIN IMMEDIATE")


@cache
def _style(text: str, pg: bool) -> str:
    return text.replace("?", "%s") if pg else text


@cache
def marks(n: int) -> str:
    """``?,?,...`` with ``n`` placeholders, for ``IN (...)`` lists."""
    return ",".join("?" * n)


# Bound parameters one statement may carry: SQLite >= 3.32 allows 32766, PostgreSQL 65535.
MAX_PARAMS = 30000


def chunks(items: Sequence[Any], size: int = 900) -> Iterable[Sequence[Any]]:
    """Slices short enough for SQLite's bound-variable limit."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


@cache
def update_sql(table: str, columns: tuple[str, ...], where: tuple[str, ...]) -> str:
    """``UPDATE table SET c1=?, ... WHERE w1=? AND ...`` for one parameter tuple per row,
    columns first, then the ``where`` values. A ``where`` item containing ``=`` or ``IN`` is
    used verbatim (a fixed guard such as ``status='ready'``)."""
    sets = ", ".join(f"{c}=?" for c in columns)
    conds = " AND ".join(w if ("=" in w or " IN " in w) else f"{w}=?" for w in where)
    return f"UPDATE {table} SET {sets} WHERE {conds}"


@cache
def insert_sql(table: str, columns: tuple[str, ...], rows: int = 1, returning: str = "") -> str:
    """``INSERT INTO table (cols) VALUES (?,..),(?,..) [RETURNING ...]``."""
    one = "(" + marks(len(columns)) + ")"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ",".join([one] * rows)
    return sql + (f" RETURNING {returning}" if returning else "")
