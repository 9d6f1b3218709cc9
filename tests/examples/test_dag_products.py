"""``pandaflow run examples/dag_products/dag.yaml``: jobs passing numbers to each other through
files named by their products, run as a user runs it (a fresh directory holding ``examples``, the
venv's bin first on PATH). The tests read the files the jobs wrote, what the database recorded,
the jobs' logs, and the processes left (none); and run the file again with a job that fails, to
see the summary job report what was made."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from support.processes import ProcessTag

from pandaflow.server.front import queries
from pandaflow.server.store.db import make_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG = Path("examples") / "dag_products" / "dag.yaml"
SUM_OF_SQUARES = 300 * 301 * 601 // 6  # of 1..300: 9045050


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the venv's bin first on PATH, no pandaflow server or home configured."""
    drop = ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN", "PANDAFLOW_HOME", "PANDAFLOW_RUN_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return {**env, **extra}


def run_dag(where: Path, dag: Path) -> tuple[subprocess.CompletedProcess, list]:
    """``pandaflow run DAG`` in ``where``; returns it and the processes it left behind."""
    tag = ProcessTag(uuid.uuid4().hex)
    try:
        done = subprocess.run(["pandaflow", "run", str(dag)], cwd=where, capture_output=True, text=True,
                              env=user_env(**{ProcessTag.VARIABLE: tag.tag}), timeout=300)  # fmt: skip
        return done, tag.alive()
    finally:
        tag.kill_all()


def recorded(db: Path) -> dict[str, dict]:
    """The workflow's jobs by name, each with the log of its last attempt (``log``)."""
    engine = make_engine(f"sqlite:///{db}", pool_size=1)
    try:
        with engine.connect() as conn:
            jobs = {job["name"]: job for job in queries.list_jobs(conn, workflow_id=1)["jobs"]}
            for job in jobs.values():
                job["log"] = queries.get_log(conn, job["id"])["text"] if job["attempt"] else ""
    finally:
        engine.dispose()
    return jobs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the example's one command in a fresh directory: (completed process, run directory)."""
    where = tmp_path_factory.mktemp("dag-products")
    (where / "examples").symlink_to(REPO_ROOT / "examples")
    done, left = run_dag(where, DAG)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    assert left == [], "the run's server or pilot outlived it"
    return done, where / "runinfo" / "000"


def test_the_jobs_pass_real_files_and_the_merge_writes_the_sum_of_the_squares(run):
    _, run_dir = run
    data = run_dir / "data"
    for i, first in ((1, 1), (2, 101), (3, 201)):
        numbers = [int(n) for n in (data / f"numbers-{i}.txt").read_text().split()]
        assert numbers == list(range(first, first + 100))
        assert [int(n) for n in (data / f"squares-{i}.txt").read_text().split()] == [n * n for n in numbers]
    assert (data / "sum.txt").read_text() == f"{SUM_OF_SQUARES}\n"


def test_every_job_finished_and_the_logs_say_what_they_did(run):
    _, run_dir = run
    jobs = recorded(run_dir / "pandaflow.db")
    assert {name: job["status"] for name, job in jobs.items()} == dict.fromkeys(
        ["generate-1", "generate-2", "generate-3", "square-1", "square-2", "square-3", "merge", "summary"],
        "finished",
    )
    assert jobs["merge"]["log"].strip() == f"sum of the squares of 1..300: {SUM_OF_SQUARES}"
    summary = jobs["summary"]["log"]
    assert summary.startswith("products made:")
    for name in ("numbers-1.txt", "squares-3.txt", "sum.txt"):
        assert name in summary
    assert summary.strip().endswith(f"result: {SUM_OF_SQUARES}")


def test_the_output_ends_with_the_report_and_commands_that_show_the_summary(run):
    done, run_dir = run
    out = done.stdout
    assert "workflow 1 'dag-products' ended after" in out and "8 of 8 job(s) finished" in out, out
    assert "SUCCEEDED 100  1" in out, out
    tail = out.split("Look at it with:", 1)[1].splitlines()[1:]
    commands = [shlex.split(line.split("#", 1)[0]) for line in tail if line.strip()]
    assert [c[:3] for c in commands] == [["pandaflow", "--db", "runinfo/000/pandaflow.db"]] * 4
    assert [c[3:] for c in commands][:2] == [["report", "1"], ["jobs", "--workflow", "1"]]
    logs = subprocess.run(commands[3], cwd=run_dir.parents[1], capture_output=True, text=True,
                          env=user_env(), timeout=60)  # fmt: skip
    assert logs.returncode == 0 and logs.stdout.strip().endswith(f"result: {SUM_OF_SQUARES}"), logs.stderr


def test_when_a_generator_fails_its_branch_and_the_merge_are_pruned_and_the_summary_says_so(tmp_path):
    doc = yaml.safe_load((REPO_ROOT / DAG).read_text())
    (broken,) = [job for job in doc["jobs"] if job["name"] == "generate-2"]
    broken.update(command="echo cannot generate >&2; exit 3", max_attempts=1)
    dag = tmp_path / "broken.yaml"
    dag.write_text(yaml.safe_dump(doc, sort_keys=False))
    done, left = run_dag(tmp_path, dag)
    assert done.returncode == 1, done.stdout + done.stderr
    assert left == []
    jobs = recorded(tmp_path / "runinfo" / "000" / "pandaflow.db")
    assert {name: job["status"] for name, job in jobs.items()} == {
        "generate-1": "finished", "generate-2": "failed", "generate-3": "finished",
        "square-1": "finished", "square-2": "pruned", "square-3": "finished",
        "merge": "pruned", "summary": "finished",
    }  # fmt: skip
    assert jobs["summary"]["log"].strip().endswith("no result: the merge did not run")
    assert "squares-2.txt" not in jobs["summary"]["log"]
    assert not (tmp_path / "runinfo" / "000" / "data" / "sum.txt").exists()
