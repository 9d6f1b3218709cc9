"""``python examples/parsl_workflow.py``: a parsl workflow on PandaExecutor's embedded server and
local pilot, run once as a user runs it (a fresh directory, the venv's bin first on PATH). The
tests read what it printed, the files its apps wrote, what the server's database recorded (with
the commands the example prints) and the processes it left (none)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.processes import ProcessTag

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "parsl_workflow.py"


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the venv's bin first on PATH, no pandaflow server or home configured."""
    drop = ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN", "PANDAFLOW_HOME", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return {**env, **extra}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the example in a fresh directory: (completed process, its directory, processes left)."""
    where = tmp_path_factory.mktemp("parsl-workflow")
    tag = ProcessTag(uuid.uuid4().hex)
    try:
        done = subprocess.run([sys.executable, str(EXAMPLE)], cwd=where, capture_output=True, text=True,
                              env=user_env(**{ProcessTag.VARIABLE: tag.tag}), timeout=300)  # fmt: skip
        left = tag.alive()
    finally:
        tag.kill_all()
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    return done, where, left


def printed_commands(out: str) -> list[list[str]]:
    """The `pandaflow --db ...` commands the example ends with, as argument lists."""
    lines = out.split("Look at the run", 1)[1].splitlines()[1:]
    return [shlex.split(line.split("#", 1)[0]) for line in lines if line.strip()]


def run_printed(words: list[str], cwd: Path, *extra: str) -> str:
    done = subprocess.run([*words, *extra], cwd=cwd, capture_output=True, text=True, env=user_env(),
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_example_prints_what_each_part_did_and_leaves_no_process(run):
    done, where, left = run
    out = done.stdout
    assert left == [], "the executor's server or pilot outlived the example"
    assert f"run directory {where / 'runinfo' / '000'}; embedded server http://127.0.0.1:" in out, out
    assert "2. flaky_fetch returned 'fetched' on parsl's try 2 of 3" in out, out
    assert "3. hungry returned 250 (MB held) on parsl's first try" in out, out
    assert re.search(r"flaky_fetch: job \d+ failed: error 1001 PAYLOAD_EXCEPTION: task raised "
                     r"ConnectionError: the service did not answer", out), out  # fmt: skip
    assert re.search(r"hungry: job \d+ attempt 1, asking 200 MB: failed: error 1101 OUT_OF_MEMORY: "
                     r"killed: RSS \d+ MB exceeded limit 200 MB", out), out  # fmt: skip
    assert re.search(r"hungry: job \d+ attempt 2, asking 400 MB: finished", out), out


@pytest.mark.slow
def test_the_bash_apps_summed_the_files_the_python_apps_wrote(run):
    done, where, _ = run
    data = where / "runinfo" / "000" / "data"
    numbers = [[int(n) for n in (data / f"numbers-{i}.txt").read_text().split()] for i in range(3)]
    assert [len(n) for n in numbers] == [1000, 1000, 1000]
    sums = [int((data / f"sum-{i}.txt").read_text()) for i in range(3)]  # what each bash app printed
    assert sums == [sum(n) for n in numbers]
    total = sum(sums)
    assert f"total {total} (the files add up to {total})" in done.stdout, done.stdout


@pytest.mark.slow
def test_the_database_holds_the_parsl_retry_and_the_memory_kill_the_printed_commands_show(run):
    done, where, _ = run
    jobs_cmd, flaky_cmd, hungry_cmd = printed_commands(done.stdout)
    assert jobs_cmd[1:3] == ["--db", f"sqlite:///{where / 'runinfo' / '000' / 'panda' / 'pandaflow.db'}"]
    assert jobs_cmd[3:] == ["jobs"]
    jobs = json.loads(run_printed(jobs_cmd, where, "--json"))["jobs"]
    by_task: dict[str, list[dict]] = {}
    for job in jobs:
        by_task.setdefault(job["task"], []).append(job)
    assert {task: len(found) for task, found in by_task.items()} == {
        "make_numbers": 3, "sum_numbers": 3, "add_up": 1, "flaky_fetch": 2, "hungry": 1,
    }  # fmt: skip
    # each parsl try is a job of its own: the first failed with the app's exception, the retry finished
    failed_try, retry = by_task["flaky_fetch"]
    assert (failed_try["status"], failed_try["error_code"]) == ("failed", 1001)
    assert (retry["status"], retry["error_code"]) == ("finished", 0)
    assert flaky_cmd[3:] == ["job", str(failed_try["id"])]
    assert "ConnectionError: the service did not answer" in run_printed(flaky_cmd, where)
    # pandaflow's own retry after the memory kill is a second attempt of the same job, asking twice the memory
    (hungry,) = by_task["hungry"]
    assert hungry_cmd[3:] == ["job", str(hungry["id"])]
    attempts = json.loads(run_printed(hungry_cmd, where, "--json"))["attempts"]
    assert [(a["memory_mb"], a["error_code"], a["status"]) for a in attempts] == [
        (200, 1101, "failed"), (400, 0, "finished"),
    ]  # fmt: skip
    assert "OUT_OF_MEMORY" in run_printed(hungry_cmd, where)
    assert {job["status"] for job in jobs if job["task"] != "flaky_fetch"} == {"finished"}
