"""Database URLs for the tests: a SQLite file, or a throwaway PostgreSQL database, for the tests
that run on both (``@pytest.fixture(params=BOTH)`` with :func:`database_url`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL_VARIABLE = "PANDAFLOW_TEST_PG_URL"
PG_REQUIRED_VARIABLE = "PANDAFLOW_TEST_PG_REQUIRED"

BOTH = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""Parameters of a fixture that runs its tests on SQLite and on PostgreSQL (marked ``postgres``)."""


def database_url(kind: str, tmp_path: Path, name: str) -> Iterator[str]:
    """Yield the URL of a fresh, empty database: for ``kind`` "sqlite" the file ``tmp_path/name``,
    for "postgres" a new database (:func:`postgres_database`), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / name}"
    else:
        yield from postgres_database()


def postgres_database():
    """Create ``pf_<random>`` on the test PostgreSQL; yield its SQLAlchemy URL; drop it afterwards.

    Without ``$PANDAFLOW_TEST_PG_URL`` the caller is skipped, unless ``PANDAFLOW_TEST_PG_REQUIRED=1``
    (CI), which makes it fail: the postgres cases must run there.
    """
    import os
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    base = os.environ.get(PG_URL_VARIABLE)
    if not base:
        if os.environ.get(PG_REQUIRED_VARIABLE) == "1":
            pytest.fail(
                f"{PG_REQUIRED_VARIABLE}=1 but {PG_URL_VARIABLE} is not set: the postgres tests must run "
                "here; start PostgreSQL (scripts/postgres.sh) and export its URL",
                pytrace=False,
            )
        pytest.skip(f"{PG_URL_VARIABLE} is not set (no PostgreSQL)")
    url = make_url(base)
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"pf_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE cannot terminate an autovacuum worker (a superuser backend) that happens to be on
        # the fresh database: wait for it rather than fail the test's teardown.
        for attempt in range(50):
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                if attempt == 49:
                    raise
                time.sleep(0.2)
