"""`pandaflow run FILE`: a DAG file run to its end on a server and pilot of the command's own, as a
user runs it (a subprocess in a fresh working directory): exit status, progress, the report,
what the database holds afterwards, refusals that start nothing, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from sqlalchemy import Connection
from support.processes import gone

from pandaflow.server.front import queries
from pandaflow.server.store.db import make_engine

VENV_BIN = Path(sys.executable).parent
PANDAFLOW = str(VENV_BIN / "pandaflow")
RUN_TIMEOUT = 120


@pytest.fixture
def shell(tmp_path, monkeypatch, process_tag):
    """A user's shell in a fresh directory: the venv first on PATH, no server or token of theirs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "home"))
    for name in ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN", "PANDAFLOW_RUN_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def pandaflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PANDAFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def write_dag(where: Path, doc: dict, name: str = "dag.yaml") -> Path:
    path = where / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def recorded_jobs(db: Path) -> dict[str, dict]:
    """The jobs of the run's workflow by name, read from its database with the server's queries."""
    with database(db) as conn:
        return {job["name"]: job for job in queries.list_jobs(conn, workflow_id=1)["jobs"]}


def job_log(db: Path, job_id: int) -> str:
    with database(db) as conn:
        return queries.get_log(conn, job_id)["text"]


@contextmanager
def database(db: Path) -> Iterator[Connection]:
    engine = make_engine(f"sqlite:///{db}", pool_size=1)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


class Reader:
    """Collects a process's stdout lines in a thread, so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def text(self) -> str:
        return "".join(self.lines)

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.text()}"
            time.sleep(0.05)


@contextmanager
def started_run(cwd: Path, dag: Path) -> Iterator[tuple[subprocess.Popen, Reader]]:
    """`pandaflow run DAG` in the background, with a :class:`Reader` of its output (stdout and
    stderr); killed if the test leaves it running. After the block the reader has every line."""
    proc = subprocess.Popen([PANDAFLOW, "run", str(dag)], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    reader = Reader(proc)
    try:
        yield proc, reader
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        reader.thread.join(30)  # every line it printed is read


FAILING = {
    "name": "fails",
    "tasks": {
        "make": {"command": "echo made"},
        "broken": {"command": "echo about to fail >&2; exit 3", "max_attempts": 1},
        "after": {"command": "echo never"},
        "final": {"command": "echo final ran after {inputs}", "always": True},
    },
    "jobs": [
        {"name": "make", "task": "make", "outputs": ["a"]},
        {"name": "broken", "task": "broken", "inputs": ["a"], "outputs": ["b"]},
        {"name": "after", "task": "after", "inputs": ["b"], "outputs": ["c"]},
        {"name": "final", "task": "final", "inputs": ["c"]},
    ],
}


def test_a_failed_job_prunes_downstream_the_always_job_runs_and_the_exit_status_is_1(shell):
    done = pandaflow("run", str(write_dag(shell, FAILING)), "--workers", "1", cwd=shell)
    assert done.returncode == 1, done.stdout + done.stderr
    db = shell / "runinfo" / "000" / "pandaflow.db"
    jobs = recorded_jobs(db)
    assert {name: job["status"] for name, job in jobs.items()} == {
        "make": "finished", "broken": "failed", "after": "pruned", "final": "finished",
    }  # fmt: skip
    assert jobs["broken"]["exit_code"] == 3
    assert job_log(db, jobs["final"]["id"]).strip() == "final ran after c"
    out = done.stdout
    broken = jobs["broken"]["id"]
    assert f"job {broken} 'broken' failed after 1 attempt(s): PAYLOAD_NONZERO_EXIT, exit code 3" in out, out
    assert "2 of 4 job(s) finished" in out, out
    # the report table of `pandaflow report`, then the commands to look at the run
    report = pandaflow("--db", "runinfo/000/pandaflow.db", "report", "1", cwd=shell)
    assert report.stdout.strip() in out, out
    assert f"pandaflow --db runinfo/000/pandaflow.db job {broken}    # 'broken'" in out, out
    assert f"pandaflow --db runinfo/000/pandaflow.db logs {broken}" in out, out


def test_progress_lines_show_the_jobs_by_state_as_they_change(shell):
    wait_for_go = 'until [ -e "$PANDAFLOW_RUN_DIR/go" ]; do sleep 0.1; done'  # runs until the test says
    doc = {"name": "steps", "jobs": [
        {"name": "one", "command": wait_for_go, "outputs": ["x"]},
        {"name": "two", "command": "true", "inputs": ["x"]},
    ]}  # fmt: skip
    with started_run(shell, write_dag(shell, doc)) as (proc, out):
        out.wait_for("running 1")
        (shell / "runinfo" / "000" / "go").touch()
        assert proc.wait(RUN_TIMEOUT) == 0, out.text()
    progress = [line.split("s  ", 1)[1] for line in out.text().splitlines() if "s  finished " in line]
    assert progress[0] == "finished 0/2, ready 1, waiting 1", out.text()
    assert "finished 0/2, running 1, waiting 1" in progress, out.text()
    assert progress[-1] == "finished 2/2", out.text()
    changes = zip(progress, progress[1:], strict=False)
    assert all(a != b for a, b in changes), "a line is printed only when the counts change"


def test_every_job_sees_the_run_directory_and_runs_in_the_pilots_work_directory(shell):
    where = 'echo "run dir $PANDAFLOW_RUN_DIR; cwd $PWD"'
    doc = {"name": "where", "jobs": [{"name": "pwd", "command": where}]}
    done = pandaflow("run", str(write_dag(shell, doc)), "--run-dir", "mine", cwd=shell)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = recorded_jobs(shell / "mine" / "pandaflow.db")
    jobdir = shell / "mine" / "pilot" / "jobs" / f"{jobs['pwd']['id']}.1"
    assert job_log(shell / "mine" / "pandaflow.db", jobs["pwd"]["id"]).strip() == (
        f"run dir {shell / 'mine'}; cwd {jobdir}"
    )
    assert "pandaflow --db mine/pandaflow.db report 1" in done.stdout


def test_with_json_stdout_holds_the_report_alone(shell):
    doc = {"name": "quiet", "jobs": [{"name": "a", "command": "true"}]}
    done = pandaflow("run", str(write_dag(shell, doc)), "--json", cwd=shell)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["name"], report["bps_state"], report["total"]["SUCCEEDED"]) == ("quiet", "SUCCEEDED", 1)
    assert "finished 1/1" in done.stderr


# ---------------------------------------------------------------- refused: exit 2, nothing started

INVALID = {"name": "bad", "tasks": {"a": {"command": "true"}}, "jobs": [
    {"name": "x", "task": "a", "inputs": "raw"},
    {"name": "y", "task": "b"},
]}  # fmt: skip


def test_an_invalid_file_is_refused_as_submit_refuses_it_and_nothing_is_made(shell, process_tag):
    path = write_dag(shell, INVALID)
    run = pandaflow("run", str(path), cwd=shell)
    submit = pandaflow("submit", str(path), cwd=shell)
    assert run.returncode == 2 and submit.returncode == 1
    assert run.stderr == submit.stderr  # the same code, the same messages
    assert f"{path}: jobs[0].inputs: expected a list of names" in run.stderr
    assert f"{path}: jobs[1].task: unknown task 'b'" in run.stderr
    assert run.stdout == ""
    assert not (shell / "runinfo").exists()
    given = pandaflow("run", str(path), "--run-dir", "wanted", cwd=shell)
    assert given.returncode == 2 and not (shell / "wanted").exists()
    assert process_tag.alive() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "x.db", "run"], "run starts a server of its own"),
        (["--server", "http://127.0.0.1:1", "run"], "run starts a server of its own"),
        (["run", "--workers", "1"], "job 'wide' asks 2 cores, more than the 1 worker slot(s)"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_starts(shell, args, message):
    path = write_dag(shell, {"name": "w", "jobs": [{"name": "wide", "command": "true", "cores": 2}]})
    done = pandaflow(*args, str(path), cwd=shell)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (shell / "runinfo").exists()


def test_a_run_gets_the_next_numbered_directory_and_one_holding_a_run_is_refused(shell):
    path = write_dag(shell, {"name": "w", "jobs": [{"name": "a", "command": "true"}]})
    (shell / "runinfo" / "004").mkdir(parents=True)  # e.g. a parsl run's
    done = pandaflow("run", str(path), cwd=shell)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run directory runinfo/005:")
    db = shell / "runinfo" / "005" / "pandaflow.db"
    before = db.stat().st_mtime_ns
    again = pandaflow("run", str(path), "--run-dir", "runinfo/005", cwd=shell)
    assert again.returncode == 2 and "runinfo/005 holds a run already" in again.stderr, again.stderr
    assert db.stat().st_mtime_ns == before


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_the_pilot_and_the_server_and_leaves_the_run_in_the_database(shell, process_tag):
    doc = {"name": "long", "jobs": [
        {"name": "nap", "command": "sleep 120", "outputs": ["rested"]},
        {"name": "after", "command": "true", "inputs": ["rested"]},
    ]}  # fmt: skip
    with started_run(shell, write_dag(shell, doc)) as (proc, out):
        out.wait_for("running 1")
        started = psutil.Process(proc.pid).children(recursive=True)  # server, pilot, its workers, the sleep
        commands = [" ".join(p.cmdline()) for p in started]
        assert any("pandaflow.server" in c for c in commands), commands
        assert any("pandaflow.pilot" in c for c in commands), commands
        assert any(c.endswith("sleep 120") for c in commands), commands
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    text = out.text()
    assert "interrupted (Ctrl-C): stopped the pilot and the server" in text, text
    assert "the database keeps the workflow and everything its jobs did so far" in text, text
    assert gone(started) == [], "a process of the run outlived it"
    assert process_tag.alive() == []
    jobs = recorded_jobs(shell / "runinfo" / "000" / "pandaflow.db")
    assert jobs["nap"]["attempt"] == 1 and jobs["nap"]["status"] != "finished"
    assert jobs["after"]["status"] == "pending"


@pytest.mark.slow
def test_a_run_killed_outright_leaves_no_process_behind(shell, process_tag):
    doc = {"name": "long", "jobs": [{"name": "nap", "command": "sleep 120"}]}
    with started_run(shell, write_dag(shell, doc)) as (proc, out):
        out.wait_for("running 1")
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()  # no chance to clean up: the server and the pilot notice it is gone (--exit-with)
        proc.wait(30)
    assert gone(started, timeout=60) == [], "a process of the run outlived it"
    assert process_tag.alive() == []
