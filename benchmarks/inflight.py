"""A loop that keeps a few evaluations in flight, side by side: parsl HTEX and PandaExecutor.

The shape of an HPO or active-learning driver: ``--inflight`` evaluations of ``--seconds`` each
are always running; as each result arrives the next one is submitted, ``--evaluations`` in all,
on two 1-core workers (HTEX: one node of 2 workers; PandaExecutor: two local 1-core pilots,
default prefetch). With no hoarding, the wall time is close to
``evaluations * seconds / 2``. Prints each wall time, the ratio panda/htex, and (panda) how
the jobs were spread over the pilots and how many were given back from one pilot's prefetch to
an idle one.

    python benchmarks/inflight.py [--evaluations 84] [--inflight 4] [--seconds 0.2] [--repeat 3]
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


def _evaluate(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def run_one(kind: str, evaluations: int, inflight: int, seconds: float) -> dict:
    from concurrent.futures import FIRST_COMPLETED, wait

    import parsl
    from parsl import python_app
    from parsl.config import Config

    run_dir = tempfile.mkdtemp(prefix=f"inflight-{kind}-")
    if kind == "htex":
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        ex = HighThroughputExecutor(
            label="htex",
            max_workers_per_node=2,
            cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, max_blocks=1),
        )
    else:
        from pandaflow.executors import PandaExecutor

        ex = PandaExecutor(label="panda", workers=1, pilots=2)
    evaluate = python_app(_evaluate, executors=[ex.label])
    parsl.load(Config(executors=[ex], run_dir=run_dir, strategy="none"))
    # Warm up: both workers up and running before the clock starts.
    for f in [evaluate(0.0) for _ in range(4)]:
        f.result()
    time.sleep(1.0)
    t0 = time.perf_counter()
    running = {evaluate(seconds) for _ in range(min(inflight, evaluations))}
    submitted = len(running)
    while running:
        done, running = wait(running, return_when=FIRST_COMPLETED)
        for f in done:
            f.result()
        while submitted < evaluations and len(running) < inflight:
            running.add(evaluate(seconds))
            submitted += 1
    wall = time.perf_counter() - t0
    out = {"kind": kind, "wall_s": wall}
    db_url = getattr(ex, "db_url", None)
    parsl.dfk().cleanup()
    if kind == "panda":
        from sqlalchemy import func, select

        from pandaflow.server.store import schema as s
        from pandaflow.server.store.db import open_database

        engine = open_database(db_url, migrate=False)
        with engine.connect() as conn:
            per_pilot = conn.execute(
                select(s.attempts.c.pilot_id, func.count()).group_by(s.attempts.c.pilot_id)
            ).all()
            out["jobs_per_pilot"] = sorted(n for _p, n in per_pilot)
            out["given_back"] = conn.execute(
                select(func.count()).select_from(s.job_events).where(s.job_events.c.event == "return")
            ).scalar()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=84)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_one(args.child, args.evaluations, args.inflight, args.seconds)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    walls: dict[str, list[float]] = {"htex": [], "panda": []}
    for _ in range(args.repeat):
        for kind in ("htex", "panda"):  # alternate, so both see the same machine
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    "--evaluations",
                    str(args.evaluations),
                    "--inflight",
                    str(args.inflight),
                    "--seconds",
                    str(args.seconds),
                ],
                capture_output=True,
                text=True,
                timeout=900,
                env=dict(
                    os.environ,
                    PYTHONUNBUFFERED="1",
                    PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                ),
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{kind}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", file=sys.stderr)
                return 1
            result = json.loads(line[7:])
            walls[kind].append(result["wall_s"])
            extra = {k: v for k, v in result.items() if k not in ("kind", "wall_s")}
            print(f"{kind:6} wall {result['wall_s']:.2f} s {extra or ''}", flush=True)
    ideal = args.evaluations * args.seconds / 2
    h, p = statistics.median(walls["htex"]), statistics.median(walls["panda"])
    print(
        f"\nideal {ideal:.2f} s; median wall: htex {h:.2f} s, panda {p:.2f} s; panda/htex {p / h:.2f}x "
        "(target <= 1.1x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
