"""Validation of one REST piece of a Rubin-shaped DAG: 50,000 jobs checked against the job
specification and brokered, without the database.

Measures, in CPU seconds of this process (the best of ``--repeat`` runs, so other work on the
machine counts less):
  rest   the raw body of ``POST /api/v1/workflows`` decoded into the typed structs and validated
         (``spec.decode_submission`` + ``submission.validate``), what the server does per piece;
  dicts  the same jobs as plain dicts (``submission.validate``), what a ZeroMQ submission costs.
Pieces: the first 50,000 jobs of ``dag_scale.py``'s graph (isr: one input, one output each) and the
last 50,000 (calibrate, then the fan-ins over detectors and visits).

    python benchmarks/validation.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dag_scale import graph  # noqa: E402

from pandaflow import spec  # noqa: E402
from pandaflow.server.jobs import submission  # noqa: E402
from pandaflow.server.jobs.broker import Broker  # noqa: E402
from pandaflow.server.jobs.queues import parse_queues  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per piece")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    everything = [job for job, _ in graph(5209, 64)]
    pieces = {"first": everything[: args.jobs], "last": everything[-args.jobs :]}
    del everything  # the server holds one piece at a time, not the whole graph
    broker = Broker(parse_queues([{"name": "local", "max_memory_mb": 64000, "cores": 64}]))
    for label, jobs in pieces.items():
        body = json.dumps({"name": "dag-scale", "available": [], "jobs": jobs}).encode()

        def rest(body=body):
            return submission.validate(spec.decode_submission(body, spec.SubmitRequest).jobs, broker)

        def dicts(jobs=jobs):
            return submission.validate(jobs, broker)

        n = len(jobs)
        for what, fn in (("rest ", rest), ("dicts", dicts)):
            seconds = best(fn, args.repeat)
            size, rate = f"{len(body) / 1e6:.1f} MB", f"{n / seconds:,.0f} jobs/s"
            print(f"{label:5s} piece, {what}: {n} jobs ({size}) in {seconds * 1000:6.0f} ms CPU ({rate})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
