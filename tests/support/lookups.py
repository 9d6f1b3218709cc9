"""Read-only looks into a job database, for assertions: rows of a table, one job or worker, the
jobs of a task, a job's attempts. ``db`` is an engine, or anything with an ``engine`` (a server)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, RowMapping, Table, select

from pandaflow.server.store import schema as s


def _engine(db: Engine | Any) -> Engine:
    return getattr(db, "engine", db)


def rows(db: Engine | Any, table: Table, *where: Any) -> list[RowMapping]:
    """Every row of ``table`` (those matching ``where``), as mappings, in primary key order."""
    with _engine(db).connect() as conn:
        query = select(table).where(*where).order_by(*table.primary_key.columns)
        return list(conn.execute(query).mappings().all())


def job_row(db: Engine | Any, job_id: int) -> RowMapping:
    """The ``jobs`` row of ``job_id``, as a mapping."""
    with _engine(db).connect() as conn:
        return conn.execute(select(s.jobs).where(s.jobs.c.id == job_id)).mappings().one()


def worker_row(db: Engine | Any, worker_id: int) -> RowMapping:
    """The ``workers`` row of ``worker_id``, as a mapping."""
    with _engine(db).connect() as conn:
        return conn.execute(select(s.workers).where(s.workers.c.id == worker_id)).mappings().one()


def jobs_of_task(engine: Engine, task: str) -> list[Any]:
    """Job rows (with every column) of the tasks called ``task``, in id order."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(s.jobs)
                .select_from(s.jobs.join(s.tasks, s.tasks.c.id == s.jobs.c.task_id))
                .where(s.tasks.c.name == task)
                .order_by(s.jobs.c.id)
            ).all()
        )


def attempts_of(engine: Engine, job_id: int) -> list[tuple[int, str, int]]:
    """``(attempt, status, error_code)`` of a job's ended attempts, in order."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(s.attempts.c.attempt, s.attempts.c.status, s.attempts.c.error_code)
                .where(s.attempts.c.job_id == job_id)
                .order_by(s.attempts.c.attempt)
            ).all()
        ]


def job_by_uid_prefix(engine: Engine, prefix: str) -> list[Any]:
    """``(uid, status)`` of every job whose uid starts with ``prefix`` (an executor's client id)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(s.jobs.c.uid, s.jobs.c.status).where(s.jobs.c.uid.startswith(prefix, autoescape=True))
            ).all()
        )
