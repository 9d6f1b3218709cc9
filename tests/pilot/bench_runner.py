"""Micro benchmark of PayloadRunner: no-op Python tasks per second through 2 warm workers.

Not a test (pytest does not collect it). Run it as a script::

    python tests/pilot/bench_runner.py [--tasks 5000] [--workers 2]

It keeps every worker busy the way the pilot does (submit while slots are free, then collect
with ``wait``) and prints the round-trip rate and the pilot thread's CPU time per task.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from parsl.serialize import deserialize, pack_apply_message

from pandaflow.pilot.runner import Payload, PayloadRunner


def noop() -> None:
    """The task: does nothing, so the figure is pure runner overhead."""
    return None


def bench(tasks: int, workers: int) -> tuple[float, float]:
    """Run ``tasks`` no-op tasks on ``workers`` slots; return (tasks per second, pilot CPU µs per task)."""
    buffer = pack_apply_message(noop, (), {}, buffer_threshold=1 << 20)
    with tempfile.TemporaryDirectory() as workdir:
        runner = PayloadRunner(workers, workdir)
        runner.start()
        try:
            # Warm-up: the first tasks pay for the forkserver and worker start.
            for i in range(workers):
                runner.submit(Payload(job_id=-1 - i, attempt=1, kind="python", buffer=buffer))
            pending = workers
            while pending:
                pending -= len(runner.wait(30))
            submitted = done = failed = 0
            outcome = None
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            while done < tasks:
                while submitted < tasks and runner.free_slots() > 0:
                    runner.submit(Payload(job_id=submitted, attempt=1, kind="python", buffer=buffer))
                    submitted += 1
                for outcome in runner.wait(30):
                    done += 1
                    failed += not outcome.ok
            wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
            if failed:
                raise SystemExit(f"{failed} tasks failed")
            assert outcome is not None and deserialize(outcome.result) is None
        finally:
            runner.stop()
    return tasks / wall, cpu / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rate, cpu_us = bench(args.tasks, args.workers)
    print(f"{args.tasks} no-op tasks, {args.workers} workers: {rate:,.0f} tasks/s, "
          f"pilot thread CPU {cpu_us:.0f} µs/task")  # fmt: skip


if __name__ == "__main__":
    main()
