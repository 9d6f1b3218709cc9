"""Scale of the data-aware DAG: a synthetic Rubin-shaped quantum graph.

Labels: isr, characterizeImage, calibrate per visit x detector; consolidateVisitSummary per
visit (fan-in over detectors); assembleCoadd per tract (fan-in over its visits); one final
merge. ``--visits 5209 --detectors 64`` gives just over 1,000,000 jobs.

Measures, against a real ``pandaflow server`` process on SQLite:
  ingest   the graph sent over REST in all-or-nothing pieces (POST /workflows, then
           POST /workflows/<id>/jobs), jobs/s and total seconds;
  rss      the server's peak resident memory while ingesting and releasing;
  release  finishing every job of the first label in bulk through the server's own completion
           code (what pilots' results trigger) and timing the indexed release of the next label;
  dispatch end to end with a local pilot running no-op shell commands on a slice of the graph
           (``--dispatch-jobs``), jobs/s.

    python benchmarks/dag_scale.py --visits 520 --detectors 64     # ~100k jobs
    python benchmarks/dag_scale.py                                   # 1M jobs
Targets (issue 3): ingest of 1M jobs <= 60 s, server RSS <= 2 GB, release + dispatch >= 2,000 jobs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import requests

TOKEN = "dag-scale-benchmark"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graph(visits: int, detectors: int, visits_per_tract: int = 50):
    """Yield jobs label by label (producers before consumers)."""
    for label, reads, writes in (
        ("isr", "raw", "postISR"),
        ("characterizeImage", "postISR", "icExp"),
        ("calibrate", "icExp", "calexp"),
    ):
        for v in range(visits):
            for d in range(detectors):
                yield {
                    "name": f"{label}-{v}-{d}",
                    "task": label,
                    "command": "true",
                    "inputs": [f"{reads}-{v}-{d}"],
                    "outputs": [f"{writes}-{v}-{d}"],
                }
    for v in range(visits):
        yield {
            "name": f"consolidateVisitSummary-{v}",
            "task": "consolidateVisitSummary",
            "command": "true",
            "inputs": [f"calexp-{v}-{d}" for d in range(detectors)],
            "outputs": [f"visitSummary-{v}"],
        }
    tracts = (visits + visits_per_tract - 1) // visits_per_tract
    for t in range(tracts):
        members = range(t * visits_per_tract, min(visits, (t + 1) * visits_per_tract))
        yield {
            "name": f"assembleCoadd-{t}",
            "task": "assembleCoadd",
            "command": "true",
            "inputs": [f"visitSummary-{v}" for v in members],
            "outputs": [f"coadd-{t}"],
        }
    yield {
        "name": "finalJob",
        "task": "finalJob",
        "command": "true",
        "inputs": [f"coadd-{t}" for t in range(tracts)],
    }


class ServerProcess:
    def __init__(self, workdir: str):
        self.port, self.zport = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/v1"
        self.db = f"sqlite:///{workdir}/scale.db"
        env = dict(os.environ, PANDAFLOW_TOKEN=TOKEN, PANDAFLOW_HOME=workdir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pandaflow.server", "--db", self.db, "--port", str(self.port),
             "--zmq-port", str(self.zport), "--info-file", f"{workdir}/server.json"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(f"{workdir}/server.log", "w"),
        )  # fmt: skip
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.session.get(f"{self.url}/info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        self.peak_rss = 0
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        ps = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    def post(self, path: str, body: dict) -> dict:
        reply = self.session.post(f"{self.url}{path}", data=json.dumps(body),
                                  headers={"Content-Type": "application/json"}, timeout=600)  # fmt: skip
        if reply.status_code >= 400:
            raise RuntimeError(f"{path}: {reply.status_code} {reply.text[:500]}")
        return reply.json()

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(30)


def ingest(server: ServerProcess, jobs, piece: int) -> tuple[int, int, float]:
    t0 = time.perf_counter()
    wid, total, batch = None, 0, []

    def send(batch):
        nonlocal wid
        if wid is None:
            wid = server.post(
                "/workflows", {"name": "dag-scale", "available": sorted(_raw(batch)), "jobs": batch}
            )["workflow_id"]
        else:
            server.post(f"/workflows/{wid}/jobs", {"available": sorted(_raw(batch)), "jobs": batch})

    for job in jobs:
        batch.append(job)
        if len(batch) >= piece:
            send(batch)
            total += len(batch)
            batch = []
    if batch:
        send(batch)
        total += len(batch)
    return wid, total, time.perf_counter() - t0


def _raw(batch) -> set[str]:
    return {p for j in batch if j["task"] == "isr" for p in j["inputs"]}


def release(server: ServerProcess, wid: int) -> tuple[int, int, float]:
    """Finish every isr job through the completion code and time the release it triggers."""
    from sqlalchemy import func, select

    from pandaflow.server import assignment, completion, pilots
    from pandaflow.server import schema as s
    from pandaflow.server.db import open_database

    engine = open_database(server.db, migrate=False)
    with engine.begin() as conn:
        pilot = pilots.register(conn, {"pilot": "bench", "queue": "local", "cores": 64}, time.time())
    isr = select(s.jobs.c.id).join(s.tasks, s.tasks.c.id == s.jobs.c.task_id).where(s.tasks.c.name == "isr")
    with engine.connect() as conn:
        last_isr = conn.execute(select(func.max(isr.subquery().c.id))).scalar()
    done = 0
    t_release = 0.0
    while True:
        with engine.begin() as conn:
            jobs = assignment.assign(conn, pilot_id=pilot, queue="local", n=20000, now=time.time())
        jobs = [j for j in jobs if j["id"] <= last_isr]  # isr only: what they release is measured, not run
        if not jobs:
            break
        outcomes = [{"id": j["id"], "attempt": j["attempt"], "ok": True, "error_code": 0} for j in jobs]
        t = time.perf_counter()
        with engine.begin() as conn:
            completion.record(conn, outcomes, time.time())
        t_release += time.perf_counter() - t
        done += len(jobs)
    with engine.connect() as conn:
        released = conn.execute(
            select(func.count()).select_from(s.jobs.join(s.tasks, s.tasks.c.id == s.jobs.c.task_id))
            .where(s.tasks.c.name == "characterizeImage", s.jobs.c.status.in_(["ready", "dispatched"]))
        ).scalar()  # fmt: skip
    engine.dispose()
    return done, released, t_release


def dispatch(n: int, workdir: str) -> tuple[int, float]:
    """A fresh server and one local pilot run a chain-shaped slice of n no-op shell jobs."""
    server = ServerProcess(workdir)
    try:
        jobs = list(graph(max(1, n // 3 // 8), 8))[:n]
        wid, total, _ = ingest(server, iter(jobs), 10000)
        env = dict(os.environ, PANDAFLOW_TOKEN=TOKEN)
        pilot = subprocess.Popen(
            [sys.executable, "-m", "pandaflow.pilot", "--zmq", f"tcp://127.0.0.1:{server.zport}",
             "--cores", "2", "--prefetch", "64", "--workdir", f"{workdir}/pilot"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        t0 = time.perf_counter()
        while True:
            summary = server.session.get(f"{server.url}/summary", timeout=30).json()
            counts = summary.get("jobs") or summary.get("counts") or {}
            ended = sum(counts.get(k, 0) for k in ("finished", "failed", "pruned", "cancelled"))
            if ended >= total or time.perf_counter() - t0 > 900:
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - t0
        pilot.terminate()
        pilot.wait(30)
        return ended, elapsed
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=5209)
    parser.add_argument("--detectors", type=int, default=64)
    parser.add_argument("--piece", type=int, default=50000, help="jobs per REST request")
    parser.add_argument("--dispatch-jobs", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dag-scale-") as workdir:
        server = ServerProcess(workdir)
        try:
            wid, total, seconds = ingest(server, graph(args.visits, args.detectors), args.piece)
            print(f"ingest:   {total} jobs in {seconds:.1f} s ({total / seconds:.0f} jobs/s)")
            done, released, t_release = release(server, wid)
            rate = released / max(t_release, 1e-9)
            print(f"release:  {done} isr jobs finished, {released} characterizeImage jobs released in "
                  f"{t_release:.1f} s of completion work ({rate:.0f} jobs/s)")  # fmt: skip
            print(f"rss:      server peak {server.peak_rss / 2**20:.0f} MB")
        finally:
            server.stop()
        os.makedirs(f"{workdir}/d", exist_ok=True)
        ended, elapsed = dispatch(args.dispatch_jobs, f"{workdir}/d")
        print(f"dispatch: {ended} no-op shell jobs end to end with one 2-slot local pilot in {elapsed:.1f} s "
              f"({ended / elapsed:.0f} jobs/s)")  # fmt: skip
    print("targets: ingest of 1M jobs <= 60 s, server RSS <= 2 GB, release + dispatch >= 2,000 jobs/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
