"""Chaos: a parsl workflow of short tasks on 1-core pilots while pilots and the server are
SIGKILLed and restarted, then a count of what was lost, wrong, duplicated or failed.

A job server (``python -m pandaflow.server``) and pilots run as subprocesses; a PandaExecutor is
attached to the server over REST/ZeroMQ. Every task sleeps a little, appends its index to a
file (to count executions) and returns ``7 * i``. Meanwhile a schedule kills, at even
intervals, a random pilot (replaced at once by a new one) or the server (restarted on the same
ports and database). Afterwards:

* lost: futures that never resolved;            must be 0
* wrong: results that are not ``7 * i``;        must be 0
* failed: futures that raised;                  must be 0 (a lost pilot burns no attempt of a
                                                job it never started)
* duplicated: jobs in the database per task other than one finished row; must be 0
* re-executed: tasks that ran more than once (a pilot died while running them): allowed,
  counted for information, as are the attempts spent.

    python benchmarks/chaos.py [--tasks 1500] [--pilots 3] [--pilot-kills 30] [--server-kills 6]
                               [--db sqlite|postgres|both] [--pg-url URL]

``--pg-url`` (or ``$PANDAFLOW_TEST_PG_URL``) is a PostgreSQL role allowed to create databases; a
throwaway database is made for the run. The test suite runs the same scenario smaller
(``tests/integration/test_chaos.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


def chaos_task(i: int, log: str, seconds: float) -> int:
    """The payload: note the execution, sleep, return a value the driver can check."""
    import os
    import time

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return 7 * i


@dataclass
class Report:
    """What a chaos run found; ``ok`` when nothing was lost, wrong, duplicated or failed."""

    db: str
    tasks: int
    pilot_kills: int
    server_kills: int
    seconds: float = 0.0
    lost: int = 0
    wrong: int = 0
    failed: int = 0
    duplicated: int = 0
    re_executed: int = 0
    executions: int = 0
    attempts: int = 0
    returned_unstarted: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.wrong or self.failed or self.duplicated)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Cluster:
    """The server and pilot subprocesses of one run."""

    def __init__(self, db_url: str, workdir: Path, token: str, pilots: int):
        self.db_url, self.workdir, self.token = db_url, workdir, token
        self.port = _free_port()
        self.zmq_port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.zmq = f"tcp://127.0.0.1:{self.zmq_port}"
        # Pilots import this module by name to run chaos_task (parsl pickles functions by reference).
        path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        self.env = dict(os.environ, PANDAFLOW_TOKEN=token, PYTHONPATH=path)
        self.server: subprocess.Popen | None = None
        self.pilots: list[subprocess.Popen] = []
        self.all: list[subprocess.Popen] = []
        self.n_pilots = pilots
        self.lock = threading.Lock()

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        self.all.append(proc)
        return proc

    def start_server(self) -> None:
        import requests

        self.server = self._spawn(
            "server",
            [
                sys.executable,
                "-m",
                "pandaflow.server",
                "--db",
                self.db_url,
                "--port",
                str(self.port),
                "--zmq-port",
                str(self.zmq_port),
                "--heartbeat-interval",
                "0.5",
                "--heartbeat-timeout",
                "2",
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                reply = requests.get(
                    f"{self.url}/api/v1/info", timeout=2, headers={"Authorization": f"Bearer {self.token}"}
                )
                if reply.status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.server.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.server.returncode}; see {self.workdir}/server.log"
                )
            time.sleep(0.05)
        raise RuntimeError(f"the server did not answer within 60 s; see {self.workdir}/server.log")

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.kill()
        self.server.wait(30)

    def start_pilot(self) -> None:
        name = f"chaos-{uuid.uuid4().hex[:6]}"
        workdir = self.workdir / name
        workdir.mkdir()
        with self.lock:
            self.pilots.append(
                self._spawn(
                    name,
                    [
                        sys.executable,
                        "-m",
                        "pandaflow.pilot",
                        "--zmq",
                        self.zmq,
                        "--cores",
                        "1",
                        "--queue",
                        "local",
                        "--name",
                        name,
                        "--workdir",
                        str(workdir),
                    ],
                )
            )

    def kill_pilot(self, rng: random.Random) -> None:
        """SIGKILL one pilot process (as a node failure would: its workers notice and exit)."""
        with self.lock:
            victim = self.pilots.pop(rng.randrange(len(self.pilots)))
        victim.kill()
        victim.wait(30)

    def stop(self) -> None:
        for proc in self.all:
            try:
                os.killpg(proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


@contextmanager
def _database(kind: str, workdir: Path, pg_url: str | None):
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'chaos.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    if not pg_url:
        raise SystemExit("--db postgres needs --pg-url or $PANDAFLOW_TEST_PG_URL")
    url = make_url(pg_url)
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"pf_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(
    db_url: str,
    workdir: Path,
    *,
    tasks: int = 300,
    pilots: int = 3,
    pilot_kills: int = 6,
    server_kills: int = 2,
    task_seconds: tuple[float, float] = (0.05, 0.15),
    seed: int = 1,
    timeout: float = 600.0,
) -> Report:
    """One chaos run on ``db_url`` (an empty database); returns what it found."""
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from sqlalchemy import create_engine, func, select

    from pandaflow.executors import PandaExecutor
    from pandaflow.server.store import schema as s

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(16)
    report = Report(db_url.split(":", 1)[0].split("+", 1)[0], tasks, pilot_kills, server_kills)
    cluster = _Cluster(db_url, workdir, token, pilots)
    log = workdir / "executions.log"
    t0 = time.monotonic()
    try:
        cluster.start_server()
        for _ in range(pilots):
            cluster.start_pilot()
        executor = PandaExecutor(label="chaos", server_url=cluster.url, token=token, workflow="chaos")
        parsl.load(Config(executors=[executor], run_dir=str(workdir / "runinfo"), strategy="none"))
        app = python_app(chaos_task, executors=["chaos"])
        durations = [rng.uniform(*task_seconds) for _ in range(tasks)]
        futures = [app(i, str(log), durations[i]) for i in range(tasks)]
        actions = ["pilot"] * pilot_kills + ["server"] * server_kills
        rng.shuffle(actions)
        work = sum(durations) / pilots
        pause = work / (len(actions) + 1) if actions else 0
        for action in actions:
            time.sleep(pause)
            if all(f.done() for f in futures):
                break
            if action == "pilot":
                cluster.kill_pilot(rng)
                cluster.start_pilot()
            else:
                cluster.kill_server()
                cluster.start_server()
        deadline = time.monotonic() + timeout
        for i, future in enumerate(futures):
            try:
                value = future.result(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                report.lost += 1
                continue
            except Exception as exc:  # a failed task
                report.failed += 1
                if len(report.failures) < 10:
                    report.failures.append(f"task {i}: {exc}")
                continue
            if value != 7 * i:
                report.wrong += 1
        report.seconds = round(time.monotonic() - t0, 1)
        parsl.dfk().cleanup()
        parsl.clear()
        runs = Counter(int(line) for line in log.read_text().split())
        report.executions = sum(runs.values())
        report.re_executed = sum(1 for n in runs.values() if n > 1)
        engine = create_engine(db_url)
        with engine.connect() as conn:
            per_uid = conn.execute(
                select(s.jobs.c.uid, func.count()).group_by(s.jobs.c.uid).having(func.count() > 1)
            ).all()
            finished = conn.execute(
                select(func.count()).select_from(s.jobs).where(s.jobs.c.status == "finished")
            ).scalar_one()
            report.duplicated = len(per_uid) + max(0, finished - tasks)
            report.attempts = conn.execute(select(func.count()).select_from(s.attempts)).scalar_one()
            report.returned_unstarted = conn.execute(
                select(func.count()).select_from(s.job_events).where(s.job_events.c.event == "return")
            ).scalar_one()
        engine.dispose()
    finally:
        cluster.stop()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--pilots", type=int, default=3)
    parser.add_argument("--pilot-kills", type=int, default=30)
    parser.add_argument("--server-kills", type=int, default=6)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get("PANDAFLOW_TEST_PG_URL"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    status = 0
    for kind in kinds:
        with (
            tempfile.TemporaryDirectory(prefix=f"chaos-{kind}-") as tmp,
            _database(kind, Path(tmp), args.pg_url) as url,
        ):
            report = run(
                url,
                Path(tmp),
                tasks=args.tasks,
                pilots=args.pilots,
                pilot_kills=args.pilot_kills,
                server_kills=args.server_kills,
                seed=args.seed,
            )
        print(json.dumps({**asdict(report), "ok": report.ok}))
        print(
            f"{kind}: {report.tasks} tasks, {report.pilot_kills} pilot kills, "
            f"{report.server_kills} server kills "
            f"in {report.seconds} s: lost {report.lost}, wrong {report.wrong}, failed {report.failed}, "
            f"duplicated {report.duplicated}; re-executed {report.re_executed}, "
            f"{report.returned_unstarted} jobs given back unstarted, {report.attempts} attempts"
        )
        status |= 0 if report.ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
