"""Loop fixtures: an embedded PandaExecutor loaded in parsl, its pilots able to import the
objectives of :mod:`objectives`."""

from __future__ import annotations

import os

import pytest
from support.processes import pythonpath
from support.waiting import connected

pytest.importorskip("optuna")
pytest.importorskip("sklearn")

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _importable_objectives(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", pythonpath(HERE))
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def panda(process_tag, load_parsl):
    """An embedded PandaExecutor (2 workers) loaded in parsl; the loops run on it."""
    from pandaflow.executors import PandaExecutor

    executor = PandaExecutor(label="panda", workers=2)
    load_parsl(executor)
    return connected(executor)
