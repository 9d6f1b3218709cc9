"""``python examples/loops/hpo_sklearn.py`` and ``python examples/loops/limit_surface.py``, run as
a user runs them (a fresh directory and home, the venv's bin first on PATH, nothing loaded): each
prints its progress and result, records its loop, leaves no process behind; the search, killed
and run again, resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from click.testing import CliRunner
from support.processes import ProcessTag

from pandaflow.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples" / "loops"


def user_env(home: Path, **extra: str) -> dict[str, str]:
    drop = ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return {**env, "PANDAFLOW_HOME": str(home), **extra}


def _run(where: Path, script: str, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    tag = ProcessTag(uuid.uuid4().hex)
    try:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / script), *args],
            cwd=where,
            capture_output=True,
            text=True,
            env=user_env(where / "home", **{ProcessTag.VARIABLE: tag.tag}),
            timeout=300,
        )
        return done, tag.alive()
    finally:
        tag.kill_all()


def _loop(home: Path, name: str) -> str:
    os.environ["PANDAFLOW_HOME"] = str(home)
    try:
        return CliRunner().invoke(main, ["loop", name], catch_exceptions=False).output
    finally:
        del os.environ["PANDAFLOW_HOME"]


def test_the_hpo_example_finds_a_good_classifier(tmp_path, monkeypatch):
    monkeypatch.delenv("PANDAFLOW_SERVER", raising=False)
    done, left = _run(tmp_path, "hpo_sklearn.py", "--trials", "10", "--parallelism", "2", "--name", "svc")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not left
    told = [line for line in done.stdout.splitlines() if line.startswith("[svc] trial ")]
    assert len(told) == 10
    best = re.search(
        r"best accuracy (0\.\d+) with C=\S+, gamma=\S+, kernel=(rbf|sigmoid) \(trial \d+ of 10; 0 failed\)",
        done.stdout,
    )
    assert best, done.stdout
    assert float(best.group(1)) > 0.9  # an SVC on the digits does better than 90% with sane C and gamma
    shown = _loop(tmp_path / "home", "svc")
    assert "progress:  10/10 (100%); 10 complete" in shown and "direction: maximize" in shown


def test_the_hpo_example_killed_and_run_again_resumes(tmp_path):
    tag = ProcessTag(uuid.uuid4().hex)
    env = user_env(tmp_path / "home", **{ProcessTag.VARIABLE: tag.tag})
    cmd = [
        sys.executable,
        str(EXAMPLES / "hpo_sklearn.py"),
        "--trials",
        "12",
        "--parallelism",
        "2",
        "--name",
        "again",
    ]
    try:
        with open(tmp_path / "first.log", "w") as out:
            first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while (tmp_path / "first.log").read_text().count("[again] trial ") < 4:
                assert time.monotonic() < deadline and first.poll() is None, (
                    tmp_path / "first.log"
                ).read_text()
                time.sleep(0.1)
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        tag.kill_all()  # what the driver started (its embedded server and pilot) dies with it
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        tag.kill_all()
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = re.search(
        r"\[again\] resuming: (\d+) trial\(s\) ended, (\d+) in flight, budget 12", done.stdout
    )
    assert resumed and int(resumed.group(1)) >= 4, done.stdout
    told_again = done.stdout.count("[again] trial ")
    assert told_again == 12 - int(resumed.group(1))  # the ended ones were not evaluated again
    assert "progress:  12/12 (100%); 12 complete" in _loop(tmp_path / "home", "again")


def test_the_limit_surface_example_beats_a_grid(tmp_path):
    done, left = _run(tmp_path, "limit_surface.py", "--budget", "40")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not left
    summary = re.search(
        r"40 evaluations: the model classifies ([\d.]+)% of a 100x100 grid right \(its own "
        r"estimate: ([\d.]+)%\)",
        done.stdout,
    )
    assert summary, done.stdout
    assert float(summary.group(1)) >= 97.0
    grid = re.search(r"a regular grid needs (\d+)x\1 = (\d+) evaluations for the same accuracy", done.stdout)
    assert grid and int(grid.group(2)) > 40, done.stdout
    assert "see every evaluation: pandaflow loop dark-photon" in done.stdout
