"""Scale of the data-aware DAG: a synthetic Rubin-shaped quantum graph.

Labels: isr, characterizeImage, calibrate per visit x detector; consolidateVisitSummary per
visit (fan-in over detectors); assembleCoadd per tract (fan-in over its visits); one final
merge. ``--visits 5209 --detectors 64`` gives just over 1,000,000 jobs.

Measures, against real ``pandaflow server`` processes on SQLite:
  ingest    the graph sent over REST in all-or-nothing pieces (POST /workflows, then
            POST /workflows/<id>/jobs), jobs/s and total seconds;
  rss       the server's peak resident memory while ingesting and releasing;
  release   finishing every job of the first label in bulk through the server's own completion
            code (what pilots' results trigger) and timing the indexed release of the next label;
  dispatch  end to end, submission to the last job ended, on a fresh server with local pilots
            already registered, running no-op shell commands (``--dispatch-jobs`` quanta of the
            isr -> characterizeImage -> calibrate chains): once with one job per quantum, once
            clustered (each visit x detector chain one payload, as bps's dimension clustering
            makes it), in quanta/s; and once with protocol-level pilots that run nothing and
            report at once, which measures the server's own release + dispatch + completion;
  vs parsl  the same DAG of ``--compare-jobs`` no-op commands (fan-ins included) run the way
            ctrl_bps_parsl runs a workflow, one parsl bash_app per job with its parents' futures
            as inputs on a HighThroughputExecutor with as many workers as the pilots have
            slots, beside pandaflow (unclustered and clustered); prints the time ratios.

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
    """Yield ``(job, vars)`` label by label (producers before consumers)."""
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
                }, {"visit": v, "detector": d}
    for v in range(visits):
        yield {
            "name": f"consolidateVisitSummary-{v}",
            "task": "consolidateVisitSummary",
            "command": "true",
            "inputs": [f"calexp-{v}-{d}" for d in range(detectors)],
            "outputs": [f"visitSummary-{v}"],
        }, {"visit": v}
    tracts = (visits + visits_per_tract - 1) // visits_per_tract
    for t in range(tracts):
        members = range(t * visits_per_tract, min(visits, (t + 1) * visits_per_tract))
        yield {
            "name": f"assembleCoadd-{t}",
            "task": "assembleCoadd",
            "command": "true",
            "inputs": [f"visitSummary-{v}" for v in members],
            "outputs": [f"coadd-{t}"],
        }, {"tract": t}
    yield {
        "name": "finalJob",
        "task": "finalJob",
        "command": "true",
        "inputs": [f"coadd-{t}" for t in range(tracts)],
    }, {}


def jobs_of(pairs) -> list[dict]:
    return [job for job, _vars in pairs]


def clustered(pairs) -> list[dict]:
    """The graph with each visit x detector chain as one payload (bps dimension clustering)."""
    from pandaflow.clustering import ClusterSpec, apply

    pairs = list(pairs)
    spec = ClusterSpec("singleFrame", ("isr", "characterizeImage", "calibrate"), ("visit", "detector"))
    jobs, problems = apply([j for j, _ in pairs], [v for _, v in pairs], [spec])
    assert not problems, problems
    return jobs


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
    return {p for j in batch for p in j.get("inputs", ()) if p.startswith("raw-")}


def release(server: ServerProcess, wid: int) -> tuple[int, int, float]:
    """Finish every isr job through the completion code and time the release it triggers."""
    from sqlalchemy import func, select

    from pandaflow import protocol
    from pandaflow.server.dispatch import assignment, completion
    from pandaflow.server.jobs import pilots
    from pandaflow.server.store import schema as s
    from pandaflow.server.store.db import open_database

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
            pilots.heartbeat(conn, [pilot], time.time())  # or the server's watchdog takes its jobs back
            jobs = assignment.assign(conn, pilot_id=pilot, queue="local", n=20000, now=time.time())
        jobs = [j for j in jobs if j.job_id <= last_isr]  # isr only: what they release is measured, not run
        if not jobs:
            break
        outcomes = [protocol.Outcome(job_id=j.job_id, attempt=j.attempt, ok=True) for j in jobs]
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


def start_pilots(server: ServerProcess, workdir: str, pilots: int, cores: int) -> list[subprocess.Popen]:
    """Local pilots, returned once all have registered (their start-up is not measured)."""
    env = dict(os.environ, PANDAFLOW_TOKEN=TOKEN)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pandaflow.pilot", "--zmq", f"tcp://127.0.0.1:{server.zport}",
             "--cores", str(cores), "--prefetch", "64", "--workdir", f"{workdir}/pilot{i}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for i in range(pilots)
    ]
    deadline = time.time() + 120
    while len(server.session.get(f"{server.url}/pilots", timeout=30).json()["pilots"]) < pilots:
        if time.time() > deadline:
            raise RuntimeError("the pilots did not register within 120 s")
        time.sleep(0.2)
    return procs


def run_dag(jobs: list[dict], workdir: str, pilots: int, cores: int) -> tuple[int, float]:
    """A fresh server with registered pilots runs ``jobs``; returns (jobs ended, seconds from the
    start of the submission to the last job ended)."""
    os.makedirs(workdir, exist_ok=True)
    server = ServerProcess(workdir)
    procs = []
    try:
        procs = start_pilots(server, workdir, pilots, cores)
        t0 = time.perf_counter()
        wid, total, _ = ingest(server, iter(jobs), 10000)
        while True:
            counts = server.session.get(f"{server.url}/workflows/{wid}", timeout=30).json().get("counts", {})
            ended = sum(counts.get(k, 0) for k in ("finished", "failed", "pruned", "cancelled"))
            if ended >= total or time.perf_counter() - t0 > 1800:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        failed = sum(counts.get(k, 0) for k in ("failed", "pruned", "cancelled"))
        if failed:
            raise RuntimeError(f"{failed} of {total} jobs did not finish: {counts}")
        return ended, elapsed
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        server.stop()


def protocol_pilot(endpoint: str, slots: int, seconds: float) -> None:
    """A pilot that runs nothing: it speaks the real protocol to the real server, asks for
    ``slots`` jobs at a time and reports each as finished as soon as it arrives. It measures
    what the server itself sustains (release, brokerage, dispatch, completion, all durable),
    without the cost of starting processes on this same 2-core machine."""
    import zmq

    from pandaflow import protocol

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, f"load-{os.getpid()}".encode())
    sock.connect(endpoint)

    def send(message) -> None:
        message.tok = TOKEN
        sock.send(protocol.encode(message))

    want = protocol.Want(n=slots, free=slots, cores=1)
    send(protocol.Register(queue="local", host="load", pid=os.getpid(), cores=slots))
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not sock.poll(1000):
            continue
        message = protocol.to_pilot(sock.recv())
        if isinstance(message, protocol.Registered):
            send(protocol.Request(want=want))
        elif isinstance(message, protocol.Jobs):
            now = time.time()
            outcomes = [
                protocol.Outcome(job_id=j.job_id, attempt=j.attempt, ok=True, exit_code=0, started_at=now,
                                 ended_at=now)
                for j in message.jobs
            ]  # fmt: skip
            send(protocol.Report(outcomes=outcomes, want=want))
    sock.close(0)


def run_dag_protocol(jobs: list[dict], workdir: str, pilots: int, slots: int) -> tuple[int, float]:
    """Like :func:`run_dag`, with :func:`protocol_pilot` processes instead of pilots."""
    import multiprocessing

    os.makedirs(workdir, exist_ok=True)
    server = ServerProcess(workdir)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=protocol_pilot, args=(f"tcp://127.0.0.1:{server.zport}", slots, 600))
             for _ in range(pilots)]  # fmt: skip
    try:
        for proc in procs:
            proc.start()
        while len(server.session.get(f"{server.url}/pilots", timeout=30).json()["pilots"]) < pilots:
            time.sleep(0.1)
        t0 = time.perf_counter()
        wid, total, _ = ingest(server, iter(jobs), 10000)
        while True:
            counts = server.session.get(f"{server.url}/workflows/{wid}", timeout=30).json().get("counts", {})
            if counts.get("finished", 0) >= total or time.perf_counter() - t0 > 1800:
                break
            time.sleep(0.05)
        return counts.get("finished", 0), time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(10)
        server.stop()


def run_parsl(jobs: list[dict], workdir: str, workers: int) -> float:
    """The DAG as ctrl_bps_parsl runs it: one bash_app per job, its parents' futures as inputs,
    on a HighThroughputExecutor with ``workers`` workers; seconds from the first submission to
    the last result (the executor's start-up is not measured)."""
    import parsl
    from parsl.app.bash import BashApp
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    def run_command(command_line: str, inputs=(), stdout=None, stderr=None) -> str:
        return command_line

    # parsl starts its interchange and workers as the venv's scripts
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    htex = HighThroughputExecutor(label="htex", max_workers_per_node=workers, cores_per_worker=1,
                                  provider=LocalProvider(init_blocks=1, max_blocks=1))  # fmt: skip
    dfk = parsl.load(Config(executors=[htex], run_dir=f"{workdir}/runinfo", strategy="none"))
    try:
        app = BashApp(run_command, data_flow_kernel=dfk, executors=["htex"])
        app("true").result()  # the workers are up
        writer: dict[str, object] = {}
        futures = []
        t0 = time.perf_counter()
        for job in jobs:  # topological order: producers first
            inputs = [writer[p] for p in job.get("inputs", ()) if p in writer]
            future = app(job["command"], inputs=inputs)
            for product in job.get("outputs", ()):
                writer[product] = future
            futures.append(future)
        for future in futures:
            future.result()
        return time.perf_counter() - t0
    finally:
        dfk.cleanup()
        parsl.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=5209)
    parser.add_argument("--detectors", type=int, default=64)
    parser.add_argument("--piece", type=int, default=50000, help="jobs per REST request")
    parser.add_argument("--dispatch-jobs", type=int, default=30000, help="quanta of the dispatch runs")
    parser.add_argument("--compare-jobs", type=int, default=10000, help="jobs of the run beside parsl HTEX")
    parser.add_argument("--pilots", type=int, default=1, help="local pilots of the dispatch runs")
    parser.add_argument("--cores", type=int, default=2, help="slots per pilot")
    parser.add_argument("--skip", action="append", default=[], choices=["ingest", "dispatch", "parsl"])
    args = parser.parse_args()
    slots = args.pilots * args.cores
    print(f"pandaflow DAG scale benchmark: {os.cpu_count()} cores here; dispatch with {args.pilots} local "
          f"pilot(s) x {args.cores} slots")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dag-scale-") as workdir:
        if "ingest" not in args.skip:
            server = ServerProcess(workdir)
            try:
                pairs = graph(args.visits, args.detectors)
                wid, total, seconds = ingest(server, (j for j, _ in pairs), args.piece)
                print(f"ingest:   {total} jobs in {seconds:.1f} s ({total / seconds:.0f} jobs/s)")
                done, released, t_release = release(server, wid)
                rate = released / max(t_release, 1e-9)
                print(f"release:  {done} isr jobs finished, {released} characterizeImage jobs released in "
                      f"{t_release:.1f} s of completion work ({rate:.0f} jobs/s)")  # fmt: skip
                print(f"rss:      server peak {server.peak_rss / 2**20:.0f} MB")
            finally:
                server.stop()
        if "dispatch" not in args.skip:
            visits = max(1, args.dispatch_jobs // 3 // 8)
            chains = list(graph(visits, 8))[: visits * 8 * 3]  # the three per-detector labels
            quanta = len(chains)
            ended, elapsed = run_dag(jobs_of(chains), f"{workdir}/d1", args.pilots, args.cores)
            print(f"dispatch: {quanta} no-op quanta, one job each: {elapsed:.1f} s, {quanta / elapsed:.0f} "
                  "quanta/s end to end")  # fmt: skip
            ended, elapsed = run_dag_protocol(jobs_of(chains), f"{workdir}/d0", 4, 64)
            print(f"dispatch: {quanta} quanta, one job each, to 4 protocol-level pilots that run nothing: "
                  f"{elapsed:.1f} s, {ended / elapsed:.0f} jobs/s released, dispatched and recorded")
            merged = clustered(chains)
            ended, elapsed = run_dag(merged, f"{workdir}/d2", args.pilots, args.cores)
            rates = f"{quanta / elapsed:.0f} quanta/s end to end ({ended / elapsed:.0f} payloads/s)"
            print(f"dispatch: {quanta} no-op quanta clustered into {ended} chain payloads: {elapsed:.1f} s, "
                  + rates)
        if "parsl" not in args.skip:
            detectors = 64
            visits = max(1, round(args.compare_jobs / (3 * detectors)))
            pairs = list(graph(visits, detectors))
            jobs = jobs_of(pairs)
            n = len(jobs)
            t_parsl = run_parsl(jobs, f"{workdir}/p", slots)
            _, t_panda = run_dag(jobs, f"{workdir}/c1", args.pilots, args.cores)
            merged = clustered(pairs)
            _, t_clustered = run_dag(merged, f"{workdir}/c2", args.pilots, args.cores)
            rows = [
                ("parsl HTEX, one bash_app per job (ctrl_bps_parsl)", t_parsl, "jobs/s", ""),
                ("pandaflow, one job per quantum", t_panda, "jobs/s",
                 f"ratio pandaflow/HTEX {t_panda / t_parsl:.2f}"),
                (f"pandaflow, chains clustered ({len(merged)} payloads)", t_clustered, "quanta/s",
                 f"ratio pandaflow/HTEX {t_clustered / t_parsl:.2f}"),
            ]  # fmt: skip
            print(f"vs parsl: the same {n}-job DAG of no-op commands with {slots} slots:")
            for what, seconds, unit, ratio in rows:
                print(f"          {what:<52} {seconds:6.1f} s  {n / seconds:6.0f} {unit:<9} {ratio}")
    print("targets: ingest of 1M jobs <= 60 s, server RSS <= 2 GB, release + dispatch >= 2,000 jobs/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
