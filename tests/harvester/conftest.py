"""Harvester fixtures: databases (SQLite, and PostgreSQL when the test command provides one), a
provider double that records calls and can be told to fail, and helpers to build queues."""

from __future__ import annotations

import pytest
from support.databases import BOTH, database_url
from support.harvest import FakeProvider

from pandaflow import providers


@pytest.fixture(params=BOTH)
def any_db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    yield from database_url(request.param, tmp_path, "harvest.db")


@pytest.fixture
def fake_provider():
    """Register ``fake`` (the :class:`FakeProvider`) for queue files; unregister afterwards.
    ``fake_provider.instances`` lists the instances the harvester built."""
    FakeProvider.instances = []
    providers.register("fake", FakeProvider, replace=True)
    yield FakeProvider
    providers.unregister("fake")
