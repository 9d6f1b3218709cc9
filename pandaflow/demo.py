"""The main job: a demo parsl workflow on the embedded pandaflow server with local pilots.

Hundreds of python and bash apps, some failing and retried (by parsl for app errors, by
pandaflow for tasks killed for memory or walltime), then a summary read back from the
server's database and the commands to inspect it.

Run with ``./scripts/demo.sh`` (or ``python -m pandaflow.demo``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import parsl
from parsl import bash_app, python_app
from parsl.config import Config

from pandaflow.errorcodes import describe
from pandaflow.executors import PandaExecutor, TaskFailed


@python_app
def estimate_pi(seed: int, n: int = 20_000) -> float:
    import random

    rng = random.Random(seed)
    inside = sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / n


@python_app
def flaky(i: int, marker_dir: str) -> int:
    """Fails on its first try (parsl retries it), succeeds on the second."""
    import os

    marker = os.path.join(marker_dir, f"flaky-{i}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"flaky task {i}: transient failure, parsl will retry")
    return i


@python_app
def greedy(mb: int, parsl_resource_specification: dict | None = None) -> int:
    """Allocates more memory than its resource_specification allows: pandaflow kills it."""
    import time

    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(3)
    return len(block)


@bash_app
def checksum(i: int, stdout: str | None = None) -> str:
    return f"echo 'line {i}' | sha1sum"


@bash_app
def failing_command(i: int) -> str:
    return f"echo 'about to fail {i}' >&2; exit 3"


@python_app
def combine(*estimates: float) -> float:
    return sum(estimates) / len(estimates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="number of pi-estimate python apps")
    parser.add_argument("--bash", type=int, default=100, help="number of bash apps")
    parser.add_argument("--workers", type=int, default=2, help="worker slots of the local pilot")
    parser.add_argument("--run-dir", default="runinfo", help="parsl run directory")
    args = parser.parse_args(argv)

    executor = PandaExecutor(label="panda", workers=args.workers)
    config = Config(executors=[executor], retries=1, run_dir=args.run_dir, strategy="none")
    t0 = time.time()
    dfk = parsl.load(config)
    marker_dir = os.path.join(dfk.run_dir, "markers")
    os.makedirs(marker_dir, exist_ok=True)
    print(f"pandaflow demo: embedded server {executor.server_url}, database {executor.db_url}")

    pis = [estimate_pi(i) for i in range(args.tasks)]
    sums = [checksum(i, stdout=os.path.join(dfk.run_dir, "checksums", f"{i}.out")) for i in range(args.bash)]
    flakies = [flaky(i, marker_dir) for i in range(20)]
    bad_cmds = [failing_command(i) for i in range(5)]
    greedy_tasks = [
        greedy(300, parsl_resource_specification={"memory": 150, "max_attempts": 2}) for _ in range(3)
    ]
    mean = combine(*pis)

    outcome: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for fut in pis + sums + flakies + bad_cmds + greedy_tasks + [mean]:
        try:
            fut.result()
            outcome["succeeded"] += 1
        except Exception as exc:
            outcome["failed"] += 1
            if isinstance(exc, TaskFailed):
                errors[f"TaskFailed: error {exc.error_code}: {describe(exc.error_code)}"] += 1
            else:
                errors[type(exc).__name__ + ": " + str(exc).splitlines()[0][:100]] += 1
    elapsed = time.time() - t0
    db_url = executor.db_url
    parsl.dfk().cleanup()

    print()
    print(
        f"pi ~ {mean.result():.4f} from {args.tasks} python apps; {args.bash} bash apps; "
        f"{len(flakies)} flaky apps retried by parsl; {len(bad_cmds)} failing commands; "
        f"{len(greedy_tasks)} tasks over their memory limit"
    )
    print(f"{sum(outcome.values())} app futures in {elapsed:.1f} s: {dict(outcome)}")
    for message, count in errors.most_common():
        print(f"  {count:4d} x {message}")
    example = _print_server_summary(db_url)
    print()
    # The venv's own command by its full path: the shell the user types into may not have the
    # venv on its PATH (./scripts/demo.sh does not activate it for them).
    cli = os.path.join(os.path.dirname(sys.executable), "pandaflow")
    print("Inspect this run (the embedded server has stopped; the CLI reads its database):")
    for cmd in (
        "status",
        "workflows",
        "jobs --status failed",
        "jobs --limit 20",
        f"job {example}",
        f"logs {example}",
        "errorcodes",
    ):
        print(f"  {cli} --db {db_url} {cmd}")
    print(f"Or serve it: {cli} server --db {db_url}  (then the same commands without --db)")
    return 0


def _print_server_summary(db_url: str) -> int:
    """Print what the server recorded; return a job worth looking at (retried, else the first)."""
    from sqlalchemy import func, select

    from pandaflow.server.store import schema as s
    from pandaflow.server.store.db import open_database

    engine = open_database(db_url, migrate=False)
    with engine.connect() as conn:
        by_state = dict(conn.execute(select(s.jobs.c.status, func.count()).group_by(s.jobs.c.status)).all())
        attempts = conn.execute(select(func.count()).select_from(s.attempts)).scalar()
        retried = conn.execute(select(func.count()).where(s.jobs.c.attempt > 1)).scalar()
        codes = conn.execute(
            select(s.jobs.c.error_code, func.count())
            .where(s.jobs.c.status == "failed")
            .group_by(s.jobs.c.error_code)
        ).all()
        example = conn.execute(select(func.min(s.jobs.c.id)).where(s.jobs.c.attempt > 1)).scalar()
        example = example or conn.execute(select(func.min(s.jobs.c.id))).scalar() or 1
    engine.dispose()
    print(
        f"server: jobs by state {by_state}; {attempts} attempts recorded; {retried} jobs retried by pandaflow"
    )
    if codes:
        for code, count in codes:
            print(f"  {count:4d} failed with error {code}: {describe(code)}")
    return example


if __name__ == "__main__":
    raise SystemExit(main())
