"""Throughput and latency, side by side: parsl HTEX, parsl ThreadPool and PandaExecutor.

One run measures, for each executor in a fresh interpreter:
  (a) N no-op python_apps submitted, then awaited: tasks/s
  (b) sequential submit-then-result round trips: median and p90 latency
  (c) parsl.load() to the first result
and prints the ratios PandaExecutor/HTEX and PandaExecutor/ThreadPool. For PandaExecutor it
also checks that every task is durably recorded as finished in the server's database.

    python benchmarks/throughput.py [--tasks 5000] [--rounds 200] [--only panda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _noop():
    return None


def run_one(kind: str, tasks: int, rounds: int) -> dict:
    import parsl
    from parsl import python_app
    from parsl.config import Config

    run_dir = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    if kind == "htex":
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        ex = HighThroughputExecutor(
            label="htex",
            max_workers_per_node=2,
            cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, max_blocks=1),
        )
    elif kind == "threads":
        from parsl.executors import ThreadPoolExecutor

        ex = ThreadPoolExecutor(label="threads", max_threads=2)
    else:
        from pandaflow.executors import PandaExecutor

        ex = PandaExecutor(label="panda", workers=2)

    noop = python_app(_noop, executors=[ex.label])
    t0 = time.perf_counter()
    parsl.load(Config(executors=[ex], run_dir=run_dir, strategy="none"))
    noop().result()
    first = time.perf_counter() - t0

    t0 = time.perf_counter()
    futs = [noop() for _ in range(tasks)]
    submitted = time.perf_counter() - t0
    for f in futs:
        f.result()
    elapsed = time.perf_counter() - t0

    lat = []
    for _ in range(rounds):
        t = time.perf_counter()
        noop().result()
        lat.append(time.perf_counter() - t)
    lat.sort()
    out = {
        "kind": kind,
        "first_result_s": first,
        "tasks": tasks,
        "throughput": tasks / elapsed,
        "submit_rate": tasks / submitted,
        "median_ms": statistics.median(lat) * 1000,
        "p90_ms": lat[int(0.9 * len(lat)) - 1] * 1000,
    }
    db_url = getattr(ex, "db_url", None)
    parsl.dfk().cleanup()
    if kind == "panda":
        from sqlalchemy import func, select

        from pandaflow.server.store import schema as s
        from pandaflow.server.store.db import open_database

        engine = open_database(db_url, migrate=False)
        with engine.connect() as conn:
            out["recorded_finished"] = conn.execute(
                select(func.count()).select_from(s.jobs).where(s.jobs.c.status == "finished")
            ).scalar()
            out["recorded_attempts"] = conn.execute(select(func.count()).select_from(s.attempts)).scalar()
        out["expected_records"] = 1 + tasks + rounds
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--only", choices=["htex", "threads", "panda"], action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child, args.tasks, args.rounds)), flush=True)
        return 0
    results = {}
    for kind in args.only or ["htex", "threads", "panda"]:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--tasks",
                str(args.tasks),
                "--rounds",
                str(args.rounds),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=dict(
                os.environ,
                PYTHONUNBUFFERED="1",
                # HTEX starts its interchange and workers as commands from the venv's bin
                PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            ),
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{kind}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", file=sys.stderr)
            continue
        results[kind] = json.loads(line[7:])
    print(f"\n{'executor':10} {'tasks/s':>9} {'submit/s':>9} {'median ms':>10} {'p90 ms':>8} {'first s':>8}")
    for kind, r in results.items():
        print(
            f"{kind:10} {r['throughput']:9.0f} {r['submit_rate']:9.0f} {r['median_ms']:10.2f} "
            f"{r['p90_ms']:8.2f} {r['first_result_s']:8.2f}"
        )
    p = results.get("panda")
    if p:
        print(
            f"\npanda durability: {p['recorded_finished']} of {p['expected_records']} tasks "
            "recorded finished, "
            f"{p['recorded_attempts']} attempts"
        )
        for anchor in ("htex", "threads"):
            a = results.get(anchor)
            if a:
                print(
                    f"panda/{anchor}: throughput {p['throughput'] / a['throughput']:.2f}x, "
                    f"median latency {p['median_ms'] / a['median_ms']:.2f}x, "
                    f"first result {p['first_result_s'] / a['first_result_s']:.2f}x"
                )
        print(
            "targets: throughput >= 1.0x htex and >= 0.8x threads; median latency <= htex; "
            f"first result <= 2 s "
            f"(panda: {p['first_result_s']:.2f} s)"
        )
    return 0 if len(results) == len(args.only or [1, 2, 3]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
