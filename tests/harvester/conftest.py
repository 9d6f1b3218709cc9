"""Harvester fixtures: databases (SQLite, and PostgreSQL when the test command provides one), a
provider double that records calls and can be told to fail, and helpers to build queues."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from harvest_doubles import FakeProvider

from pandaflow import providers

PG_URL_VARIABLE = "PANDAFLOW_TEST_PG_URL"


def _postgres_database():
    """Create ``pf_<random>`` on the test PostgreSQL; yield its URL; drop it afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = os.environ.get(PG_URL_VARIABLE)
    if not base:
        if os.environ.get("PANDAFLOW_TEST_PG_REQUIRED") == "1":
            pytest.fail(f"{PG_URL_VARIABLE} is not set but PostgreSQL tests are required", pytrace=False)
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'harvest.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def fake_provider():
    """Register ``fake`` (the :class:`FakeProvider`) for queue files; unregister afterwards.
    ``fake_provider.instances`` lists the instances the harvester built."""
    FakeProvider.instances = []
    providers.register("fake", FakeProvider, replace=True)
    yield FakeProvider
    providers.unregister("fake")
