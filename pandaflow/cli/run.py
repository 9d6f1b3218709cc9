"""``pandaflow run FILE``: a DAG file run to its end on this machine, with nothing to set up.

The file is validated as ``pandaflow submit`` validates it (:func:`.dags.load_dag`: the same code
and messages; nothing is started for a refused file). Then an embedded server (SQLite in the run
directory) and a local pilot start, as a ``PandaExecutor`` starts its own
(:class:`pandaflow.executors.embedded.Processes`); the workflow is submitted (:func:`.dags.send`),
its progress printed while it runs, and once every job has ended the report of
``pandaflow report`` and the commands to look at the run afterwards. The server and pilot are
stopped whatever happens (Ctrl-C included), and stop by themselves if this process is killed
(``--exit-with``).

Every job's environment holds ``PANDAFLOW_RUN_DIR``, the absolute path of the run directory: a DAG
whose products are files can name them relative to it (``examples/dag_products``).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pandaflow.cli.dags import load_dag, report_text, send, submitted_lines
from pandaflow.cli.output import with_json
from pandaflow.cli.root import main, settings

if TYPE_CHECKING:
    from pandaflow.client import Client
    from pandaflow.dagfile import DagFile
    from pandaflow.executors.embedded import Processes

RUNS = Path("runinfo")  # where fresh run directories are made (numbered as parsl numbers its own)
DATABASE = "pandaflow.db"
REFUSED = 2  # the exit status of a file or options refused before anything started
POLL_EVERY = 0.2  # seconds between looks at the workflow
PRINT_EVERY = 1.0  # at most one progress line per this many seconds
START_TIMEOUT = 60.0  # seconds the server gets to answer
MAX_RESTARTS = 3  # a server or pilot that exits more often than this ends the run
FAILURES_SHOWN = 5  # failed jobs named at each progress line (the others are counted)
#: The states of a job that did not finish, in the order the run's end points at one of them.
UNFINISHED = ("failed", "cancelled", "pruned", "held", "running", "dispatched", "reserved", "ready",
              "pending")  # fmt: skip
#: Job states in the order progress lines show them, with the word shown (reserved and dispatched
#: jobs are on their way to the pilot; pending jobs wait for their inputs).
PROGRESS_WORDS = (
    ("finished", ("finished",)),
    ("failed", ("failed",)),
    ("pruned", ("pruned",)),
    ("cancelled", ("cancelled",)),
    ("running", ("running",)),
    ("starting", ("reserved", "dispatched")),
    ("ready", ("ready",)),
    ("held", ("held",)),
    ("waiting", ("pending",)),
)


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: the run stops, with exit status 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__("interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)")
        self.status = 128 + signum


class GaveUp(Exception):
    """The run cannot go on (the server does not start, a process keeps exiting): the message says why."""


def _refused(message: str) -> click.ClickException:
    error = click.ClickException(message)
    error.exit_code = REFUSED
    return error


def shown(path: Path) -> str:
    """``path`` as the user can type it here: relative when it is under the working directory."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cli_command() -> str:
    """How the user runs this ``pandaflow``: its name when the shell finds this one by it, else its
    full path (the venv may not be on the user's PATH)."""
    ours = os.path.join(os.path.dirname(sys.executable), "pandaflow")
    found = shutil.which("pandaflow")
    if found and os.path.exists(ours) and os.path.samefile(found, ours):
        return "pandaflow"
    return ours if os.path.exists(ours) else "pandaflow"


def new_run_dir(given: str | None) -> Path:
    """The run directory, made now: ``given``, else the next number under ./runinfo/."""
    if given is not None:
        path = Path(given)
        if (path / DATABASE).exists():
            raise _refused(
                f"{path} holds a run already ({path / DATABASE}): give --run-dir a new directory, or leave "
                f"--run-dir out for a fresh one under {RUNS}/"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _refused(f"cannot make the run directory {path}: {exc.strerror or exc}") from None
        return path
    try:
        RUNS.mkdir(exist_ok=True)
        number = max((int(p.name) for p in RUNS.iterdir() if p.name.isdigit()), default=-1) + 1
        while True:
            path = RUNS / f"{number:03d}"
            try:
                path.mkdir()
                return path
            except FileExistsError:  # another run took it meanwhile
                number += 1
    except OSError as exc:
        raise _refused(
            f"cannot make a run directory under {RUNS.resolve()}: {exc.strerror or exc}; give --run-dir DIR"
        ) from None


def progress_line(elapsed: float, counts: dict[str, int]) -> str:
    """``  2.4s  finished 3/8, running 2, waiting 3``: the jobs by state."""
    total = sum(counts.values())
    parts = []
    for word, states in PROGRESS_WORDS:
        n = sum(counts.get(state, 0) for state in states)
        if word == "finished":
            parts.append(f"finished {n}/{total}")
        elif n:
            parts.append(f"{word} {n}")
    return f"{elapsed:6.1f}s  " + ", ".join(parts)


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` inside the block (which then cleans up)."""

    def stop(signum: int, _frame: Any) -> None:
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Run:
    """One ``pandaflow run``: its processes, its workflow, and what it prints (through ``say``)."""

    def __init__(self, dag: DagFile, run_dir: Path, workers: int, say: Callable[[str], None]):
        from pandaflow.executors.embedded import Processes

        self.dag = dag
        self.run_dir = run_dir
        self.say = say
        self.procs: Processes = Processes(str(run_dir.resolve()), "run", uuid.uuid4().hex)
        self.procs.workers = workers
        self.procs.workdir = str(run_dir.resolve() / "pilot")
        self.procs.env = {"PANDAFLOW_RUN_DIR": str(run_dir.resolve())}
        self.client: Client | None = None
        self.db_url = ""
        self.workflow_id: int | None = None
        self.restarts: dict[str, int] = {}
        self.t0 = time.monotonic()

    # ---------------------------------------------------------------- processes
    def start(self) -> None:
        """Start the server and the pilot; return once the server answers."""
        from pandaflow import config as pf_config
        from pandaflow.client import Client

        url, _, self.db_url = self.procs.start_server(None, heartbeat_interval=2.0)
        # With the server's address (server.json) and token here, PANDAFLOW_HOME=<run dir> makes the
        # CLI talk to this server from another shell.
        pf_config.write_private(self.run_dir / "token", self.procs.token)
        self.procs.start_local_pilot("pilot")
        self.client = Client(url, self.procs.token, timeout=10.0)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if time.monotonic() >= deadline:
                raise GaveUp(
                    f"the server did not answer within {START_TIMEOUT:g} s; {self._log_tail('server')}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        from pandaflow.client import ClientError

        code = self.procs.procs["server"].poll()
        if code is not None:
            raise GaveUp(f"the server exited with status {code} while starting; {self._log_tail('server')}")
        try:
            self.client.info()  # type: ignore[union-attr]
            return True
        except ClientError:
            return False

    def _log_tail(self, name: str, lines: int = 20) -> str:
        path = self.run_dir / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"its log {shown(path)} cannot be read"
        return f"its log {shown(path)} ends with:\n" + "\n".join(f"    {line}" for line in tail)

    def supervise(self) -> None:
        """Restart the server or pilot if it exited (nothing is lost: the database holds every job)."""
        for name, proc in self.procs.procs.items():
            code = proc.poll()
            if code is None:
                continue
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self.restarts[name] > MAX_RESTARTS:
                raise GaveUp(f"the {name} exited {self.restarts[name]} times; {self._log_tail(name)}")
            self.say(f"the {name} exited with status {code}; restarting it (its log: "
                     f"{shown(self.run_dir / (name + '.log'))})")  # fmt: skip
        self.procs.supervise()

    def stop(self) -> None:
        """Stop the pilot (it gives back what it holds), then the server; a signal cannot cut it short."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.procs.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ---------------------------------------------------------------- the workflow
    def submit(self, owner: str | None) -> None:
        from pandaflow.client import ClientError

        try:
            sent = send(self.client, self.dag, owner)  # type: ignore[arg-type]
        except ClientError as exc:
            problems = "".join(f"\n  {p}" for p in exc.problems)
            raise _refused(f"the server refused the workflow, nothing ran: {exc}{problems}") from None
        self.workflow_id = sent["workflow_id"]
        self.t0 = time.monotonic()
        for line in submitted_lines(self.dag, sent):
            self.say(line)

    def follow(self) -> None:
        """Print the jobs by state when they change (at most about once a second) and each job that
        fails, until every job has ended."""
        from pandaflow.client import ClientError

        shown_counts: dict[str, int] | None = None
        printed_at = float("-inf")
        failed: set[int] = set()
        unanswered = ""
        while True:
            self.supervise()
            try:
                workflow = self.client.get_workflow(self.workflow_id)  # type: ignore[union-attr, arg-type]
            except ClientError as exc:  # restarting, or too busy to answer in time: ask again
                if str(exc) != unanswered:
                    self.say(f"the server did not answer ({exc}); asking again")
                    unanswered = str(exc)
                time.sleep(1.0)
                continue
            unanswered = ""
            counts, ended = workflow["counts"], workflow["status"] != "running"
            now = time.monotonic()
            if counts != shown_counts and (ended or now - printed_at >= PRINT_EVERY):
                self.say(progress_line(now - self.t0, counts))
                shown_counts, printed_at = counts, now
                if counts.get("failed", 0) > len(failed):
                    self._say_failures(failed)
            if ended:
                return
            time.sleep(POLL_EVERY)

    def _say_failures(self, known: set[int]) -> None:
        """A line for each job that failed since the last look (the first few), with its error."""
        page = self.client.list_jobs(workflow_id=self.workflow_id, status="failed", limit=1000)  # type: ignore[union-attr]
        new = [job for job in page["jobs"] if job["id"] not in known]
        for job in new[:FAILURES_SHOWN]:
            exit_code = "" if job["exit_code"] is None else f", exit code {job['exit_code']}"
            self.say(f"        job {job['id']} {job['name']!r} failed after {job['attempt']} attempt(s): "
                     f"{job['error_name']}{exit_code}")  # fmt: skip
        if len(new) > FAILURES_SHOWN:
            self.say(f"        and {len(new) - FAILURES_SHOWN} more job(s) failed")
        known.update(job["id"] for job in new)

    # ---------------------------------------------------------------- afterwards
    def recorded(self) -> tuple[dict[str, Any], tuple[dict[str, Any], str] | None]:
        """The workflow's report, read from the database (the server has stopped), and the job worth
        a look with why: the first that did not finish (failed ones first), else the last."""
        from pandaflow.server.front import queries
        from pandaflow.server.store.db import make_engine

        wid = self.workflow_id
        engine = make_engine(self.db_url, pool_size=1)
        try:
            with engine.connect() as conn:
                report = queries.report(conn, wid)  # type: ignore[arg-type]
                for state in UNFINISHED:
                    found = queries.list_jobs(conn, workflow_id=wid, status=state, limit=1)["jobs"]
                    if found:
                        return report, (found[0], f"the first job {state}")
                last = report["n_jobs"] - 1
                found = queries.list_jobs(conn, workflow_id=wid, limit=1, offset=max(0, last))["jobs"]
        finally:
            engine.dispose()
        return report, (found[0], "the last job") if found else None

    def inspect_lines(self, worth_a_look: tuple[dict[str, Any], str] | None) -> list[str]:
        """The commands to look at the run in its database: the report, the jobs, and one job."""
        cli = f"{cli_command()} --db {shown(self.run_dir / DATABASE)}"
        wid = self.workflow_id
        lines = [f"  {cli} report {wid}", f"  {cli} jobs --workflow {wid}"]
        if worth_a_look is not None:
            job, why = worth_a_look
            lines += [f"  {cli} job {job['id']}    # {job['name']!r}, {why}", f"  {cli} logs {job['id']}"]
        return lines


@main.command("run")
@click.argument("dag_file", type=click.Path(dir_okay=False))
@click.option(
    "--run-dir", default=None, type=click.Path(file_okay=False),
    help=f"Directory of the run: the database, the logs, the jobs' directories (default: a new "
    f"numbered one under ./{RUNS}/).",
)  # fmt: skip
@click.option(
    "--workers", default=None, type=click.IntRange(min=1),
    help="Worker slots of the local pilot: jobs run side by side (default: the CPU count).",
)  # fmt: skip
@click.option("--owner", default=None, help="Owner of the workflow (default: the file's 'owner', else you).")
@with_json
@click.pass_context
def run_command(
    ctx: click.Context, dag_file: str, run_dir: str | None, workers: int | None, owner: str | None
) -> None:
    """Run a DAG file to its end on this machine: a server and a pilot of its own, the progress
    while it runs, then the report and how to look at the run.

    The file is checked as `pandaflow submit` checks it. Every job's environment holds
    PANDAFLOW_RUN_DIR, the run directory. Exit status: 0 every job finished; 1 some did not
    (failed, pruned, cancelled), or the server or pilot kept failing; 2 the file or the options
    were refused and nothing was started; 130 interrupted by Ctrl-C (the database keeps the run).
    With --json the progress goes to stderr and stdout holds the report's JSON alone.
    """
    root = ctx.find_root()
    if settings().db_url or root.get_parameter_source("server_url") is click.core.ParameterSource.COMMANDLINE:
        raise _refused(
            "run starts a server of its own, with its database in the run directory: drop --server/--db "
            "(`pandaflow submit FILE` sends a file to a running server)"
        )
    dag = load_dag(dag_file, exit_code=REFUSED)
    workers = workers or os.cpu_count() or 1
    widest = max(dag.jobs, key=lambda job: job.get("cores") or 1)
    if (widest.get("cores") or 1) > workers:
        raise _refused(
            f"job {widest['name']!r} asks {widest['cores']} cores, more than the {workers} worker slot(s) of "
            f"the local pilot: it could never start. Give --workers {widest['cores']} (or more)"
        )
    as_json = settings().as_json

    def say(line: str) -> None:  # with --json, stdout holds the report's JSON alone
        click.echo(line, err=as_json)

    with stopping_on_signals():
        try:
            status = _run(dag, new_run_dir(run_dir), workers, owner, say)
        except Stopped as stop:  # a second signal, while the end of the run was being printed
            status = stop.status
    ctx.exit(status)


def _run(dag: DagFile, run_dir: Path, workers: int, owner: str | None, say: Callable[[str], None]) -> int:
    """Start, submit, follow, stop and tell; returns the exit status."""
    import json

    current = Run(dag, run_dir, workers, say)
    say(f"run directory {shown(run_dir)}: the database, the server's and the pilot's logs, the jobs' "
        f"directories (pilot/jobs/)")  # fmt: skip
    try:
        try:
            current.start()
            say(f"server {current.client.url} and a pilot with {workers} worker slot(s); "  # type: ignore[union-attr]
                f"from another shell: PANDAFLOW_HOME={run_dir.resolve()} {cli_command()} jobs")  # fmt: skip
            current.submit(owner)
            current.follow()
        finally:
            current.stop()
    except Stopped as stop:
        say(f"{stop}: stopped the pilot and the server")
        if current.workflow_id is None:
            say("the workflow had not been submitted yet")
            return stop.status
        say("the database keeps the workflow and everything its jobs did so far; look at it with:")
        _, worth_a_look = current.recorded()
        for line in current.inspect_lines(worth_a_look):
            say(line)
        return stop.status
    except GaveUp as exc:
        raise click.ClickException(f"{exc}\nstopped the pilot and the server") from None
    report, worth_a_look = current.recorded()
    finished = report["total"]["SUCCEEDED"]
    say(f"workflow {current.workflow_id} {dag.name!r} ended after {time.monotonic() - current.t0:.1f} s: "
        f"{finished} of {report['n_jobs']} job(s) finished")  # fmt: skip
    if settings().as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        say("")
        say(report_text(report))
        say("")
    say("the server and the pilot have stopped; the database keeps the run. Look at it with:")
    for line in current.inspect_lines(worth_a_look):
        say(line)
    return 0 if report["status"] == "finished" else 1
