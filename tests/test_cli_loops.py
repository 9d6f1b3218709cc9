"""``pandaflow loops`` and ``pandaflow loop NAME``: from a database, a server, or the database a
loop's embedded server left behind."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from support.servers import serving

from pandaflow.cli import main
from pandaflow.server.jobs import loops
from pandaflow.server.store.db import open_database


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PANDAFLOW_SERVER", raising=False)
    monkeypatch.delenv("PANDAFLOW_TOKEN", raising=False)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _fill(engine, name: str = "gan") -> None:
    with engine.begin() as conn:
        now = time.time()
        loops.open_loop(
            conn, now, name=name, kind="hpo", config={"space": {}}, budget=4, direction="minimize"
        )
        loops.record_trials(
            conn,
            now,
            name,
            [
                {"number": 0, "params": {"lr": 0.01, "layers": 3}, "state": "complete", "value": 0.42},
                {"number": 1, "params": {"lr": 0.1, "layers": 2}, "state": "complete", "value": 0.17},
                {
                    "number": 2,
                    "params": {"lr": 0.5, "layers": 1},
                    "state": "failed",
                    "error": "diverged\nat step 3",
                    "attempts": 3,
                },
                {"number": 3, "params": {"lr": 0.05, "layers": 4}},
            ],
        )


def test_loops_and_loop_read_a_database(engine, db_url):
    _fill(engine)
    listed = run("--db", db_url, "loops")
    assert listed.exit_code == 0, listed.output
    assert (
        "gan" in listed.output
        and "3/4" in listed.output
        and "75%" in listed.output
        and "0.17" in listed.output
    )
    shown = run("--db", db_url, "loop", "gan", "--best")
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "best:      0.17 (trial 1: layers=2, lr=0.1)" in out
    assert "3/4 (75%); 1 running, 2 complete, 1 failed" in out
    rows = [line.split()[0] for line in out.splitlines() if line[:5].strip().isdigit()]
    assert rows == ["1", "0", "2", "3"]  # best first, those without a value last
    assert "diverged" in out and "at step 3" not in out  # the first line of an error
    failed = json.loads(run("--db", db_url, "loop", "gan", "--state", "failed", "--json").output)
    assert [t["number"] for t in failed["trials"]["trials"]] == [2] and failed["loop"]["budget"] == 4


def test_loop_reads_a_server(engine, db_url):
    _fill(engine)
    with serving(db_url, "tok") as server:
        out = run("--server", server.url, "--token", "tok", "loop", "gan").output
    assert "best:      0.17" in out


def test_without_a_server_the_embedded_runs_of_loops_are_read(tmp_path):
    for name in ("first", "second"):
        (tmp_path / "home" / "runs" / f"loop-{name}").mkdir(parents=True)
        engine = open_database(f"sqlite:///{tmp_path / 'home' / 'runs' / f'loop-{name}' / 'pandaflow.db'}")
        _fill(engine, name)
        engine.dispose()
    listed = run("loops").output
    assert "first" in listed and "second" in listed and "loops 1-2 of 2" in listed
    assert "loop:      second" in run("loop", "second").output
    missing = run("loop", "third")
    assert missing.exit_code == 1
    assert "no loop 'third'" in missing.output and "first, second" in missing.output
