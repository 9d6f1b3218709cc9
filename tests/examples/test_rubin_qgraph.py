"""``examples/rubin_qgraph/run.sh``: a real quantum graph through the real ``bps submit`` on the local
server and pilot that bps starts, run once as a user runs it (a shell with the venv's bin first on
PATH, no server configured); the tests read what it printed, the butler it filled and the
processes it left (none)."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytest.importorskip("lsst.ctrl.bps")
pytest.importorskip("lsst.pipe.base.tests.simpleQGraph")

from lsst.daf.butler import Butler  # noqa: E402
from support.bps import report_table, stop_local  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "rubin_qgraph"
OPERATOR = getpass.getuser()  # bps's default operator
# make_repo.py's inputs (add_dataset0 by detector); each AddTask adds 3
INPUTS = {0: [0.0, 1.0, 2.0, 5.0], 1: [1.0, 2.0]}


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the venv's bin first on PATH, no pandaflow server or home configured."""
    drop = ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN", "PANDAFLOW_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return {**env, **extra}


def run_example(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXAMPLE / "run.sh"), *args], cwd=cwd, env=user_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the example in a fresh directory: (completed process, its directory)."""
    where = tmp_path_factory.mktemp("rubin-qgraph")
    try:
        done = run_example(str(where / "run"), cwd=where)
    finally:
        stop_local(where / "run" / "pandaflow-home")  # only if the script could not
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    return done, where / "run"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_job_of_the_graph_succeeds_and_bps_report_says_so(run):
    done, _ = run
    assert "Run Id: 1 (pandaflow workflow 1;" in done.stdout and "run 1 SUCCEEDED" in done.stdout
    table = report_table(done.stdout)
    assert {label: row["SUCCEEDED"] for label, row in table.items()} == {
        "TOTAL": 8, "pipetaskInit": 1, "task0": 2, "task1": 2, "task2": 2, "finalJob": 1,
    }  # fmt: skip
    assert all(row["SUCCEEDED"] == row["EXPECTED"] for row in table.values())


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_outputs_are_in_the_butler_with_the_values_each_task_computed(run):
    done, where = run
    butler = Butler.from_config(str(where / "repo"), collections=[f"u/{OPERATOR}/demo"])
    try:
        for level in (1, 2, 3):
            for prefix, extra in (("add", 0.0), ("add2", 3.0)):  # add2_datasetN = add_datasetN + 3
                refs = butler.query_datasets(f"{prefix}_dataset{level}", find_first=True, explain=False)
                got = {ref.dataId["detector"]: butler.get(ref).tolist() for ref in refs}
                assert got == {d: [v + 3 * level + extra for v in values] for d, values in INPUTS.items()}
    finally:
        butler.close()
    # ... and the script listed them (butler query-datasets): 2 detectors x 6 dataset types
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith(("add_", "add2_"))]
    expected = [f"{p}_dataset{n}" for p in ("add", "add2") for n in (1, 2, 3) for _detector in INPUTS]
    assert sorted(listed) == sorted(expected)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_local_server_and_pilot_it_started_are_stopped(run):
    done, where = run
    state = json.loads((where / "pandaflow-home" / "bps-local.json").read_text())
    for what in ("server", "pilot"):
        pid = state[f"{what}_pid"]
        assert f"stopped the local pandaflow {what} (pid {pid})" in done.stdout
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_directory_that_is_not_empty_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "file").write_text("kept")
    done = run_example(str(tmp_path / "old"), cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    refused = f"Error: {tmp_path / 'old'} is not an empty directory: name a new or empty one"
    assert done.stderr.strip() == refused
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["file"]


def test_make_repo_refuses_a_repository_that_exists(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "butler.yaml").write_text("")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_repo.py"), str(tmp_path / "repo")], capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"{tmp_path / 'repo'} exists and is not an empty directory: name a new one" in done.stderr
