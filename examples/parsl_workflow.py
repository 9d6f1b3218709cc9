"""A parsl workflow run through pandaflow: python and bash apps, a dependency between them, parsl
retries, and a memory limit that pandaflow enforces.

    python examples/parsl_workflow.py

It runs on PandaExecutor's default: an embedded job server (its SQLite database under parsl's run
directory, ./runinfo/NNN/panda/) and one local pilot, both stopped when the workflow is done.
It takes about 20 s. What it shows, part by part:

1. python apps write numbers to files and bash apps add them up: a future passed as an argument
   is a dependency (parsl starts an app once the apps it was given have finished);
2. an app that fails on its first try is retried by parsl (``Config(retries=2)``);
3. an app asks for 200 MB and uses more: the pilot kills it (error 1101, OUT_OF_MEMORY) and
   pandaflow retries it asking twice the memory, without parsl seeing a failure;

then it reads back what the server recorded and prints the commands to look at the run.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import parsl
from parsl import bash_app, python_app
from parsl.config import Config

from pandaflow.executors import PandaExecutor

# ---------------------------------------------------------------- 1. python and bash apps, a dependency


@python_app
def make_numbers(path: str, count: int, seed: int) -> str:
    """Writes ``count`` random integers to ``path``, one a line; returns the path."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as out:
        out.writelines(f"{rng.randint(1, 1000)}\n" for _ in range(count))
    return path


@bash_app
def sum_numbers(path: str, stdout: str | None = None) -> str:
    """A shell command adding up the numbers of a file; parsl sends its output to ``stdout``."""
    return f"awk '{{ total += $1 }} END {{ print total }}' {path}"


@python_app
def add_up(sum_files: list[str], *bash_apps_done: int) -> int:
    """Adds the sums the bash apps printed. The bash apps' futures are passed only so that this
    app waits for them (each resolves to its command's exit code, 0)."""
    total = 0
    for path in sum_files:
        with open(path) as sums:
            total += int(sums.read())
    return total


# ---------------------------------------------------------------- 2. an app parsl retries


@python_app
def flaky_fetch(marker: str) -> str:
    """Fails on its first try, as a flaky service would; the retry finds the marker and succeeds."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("the service did not answer (this app always fails on its first try)")
    return "fetched"


# ---------------------------------------------------------------- 3. an app over its memory limit


@python_app
def hungry(megabytes: int, parsl_resource_specification: dict[str, Any] | None = None) -> int:
    """Holds ``megabytes`` of memory for three seconds. An app must declare
    ``parsl_resource_specification`` to be given one: its ``memory`` (MB) is the limit the pilot
    enforces."""
    import time

    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):  # touch every page, so the memory is really in use
        block[i] = 1
    time.sleep(3)  # long enough for the pilot, which samples memory once a second
    return megabytes


# ---------------------------------------------------------------- the run


def main() -> int:
    # PandaExecutor() with no server_url starts an embedded server and a local pilot (one worker
    # slot per core); retries=2 lets parsl run a failing app up to three times in all.
    executor = PandaExecutor(label="panda")
    config = Config(executors=[executor], retries=2, run_dir="runinfo")
    with parsl.load(config) as dfk:
        data = os.path.join(dfk.run_dir, "data")
        os.makedirs(data)
        print(f"run directory {dfk.run_dir}; embedded server {executor.server_url}")

        # 1. Three python apps, a bash app on each one's file, a python app on the bash apps.
        numbers = [make_numbers(os.path.join(data, f"numbers-{i}.txt"), 1000, seed=i) for i in range(3)]
        sum_files = [os.path.join(data, f"sum-{i}.txt") for i in range(3)]
        sums = [sum_numbers(path, stdout=out) for path, out in zip(numbers, sum_files, strict=True)]
        total = add_up(sum_files, *sums)

        # 2. Fails once, then parsl retries it.
        fetched = flaky_fetch(os.path.join(data, "flaky-fetch.marker"))

        # 3. Asks for 200 MB, uses 250 MB: killed, then retried by pandaflow with 400 MB.
        held = hungry(250, parsl_resource_specification={"memory": 200})

        print(f"1. three python apps wrote 1000 numbers each, three bash apps summed each file: total "
              f"{total.result()} (the files add up to {sum_of_files(numbers)})")  # fmt: skip
        tries = fetched.task_record["try_id"] + 1  # parsl counts tries from 0
        print(f"2. flaky_fetch returned {fetched.result()!r} on parsl's try {tries} of {1 + config.retries}")
        print(f"3. hungry returned {held.result()} (MB held) on parsl's first try")
    # Leaving the `with` block shut the executor down: its server and pilot have stopped, and
    # everything they did is in the server's database.
    jobs = recorded_jobs(executor.db_url)
    print("What the server recorded (each parsl try is a pandaflow job; pandaflow's own retries are "
          "attempts of one job):")  # fmt: skip
    for job in jobs["flaky_fetch"]:
        print(f"   flaky_fetch: job {job['id']} {outcome(job)}")
    for attempt in jobs["hungry"][0]["attempts"]:
        print(f"   hungry: job {jobs['hungry'][0]['id']} attempt {attempt['attempt']}, asking "
              f"{attempt['memory_mb']} MB: {outcome(attempt)}")  # fmt: skip

    # The venv's own command by its full path: the shell typed into may not have the venv on PATH.
    cli = os.path.join(os.path.dirname(sys.executable), "pandaflow")
    print("Look at the run (the server has stopped; the CLI reads its database):")
    print(f"  {cli} --db {executor.db_url} jobs")
    print(f"  {cli} --db {executor.db_url} job {jobs['flaky_fetch'][0]['id']}   # the try that failed")
    print(f"  {cli} --db {executor.db_url} job {jobs['hungry'][0]['id']}   # killed for its memory, retried")
    return 0


def sum_of_files(numbers: list[Any]) -> int:
    """The numbers the python apps wrote, added up here (a check of what the apps computed)."""
    total = 0
    for future in numbers:
        with open(future.result()) as lines:
            total += sum(int(line) for line in lines)
    return total


def recorded_jobs(db_url: str) -> dict[str, list[dict[str, Any]]]:
    """The jobs of the flaky and the hungry apps as the server recorded them, with their attempts
    (the queries behind ``pandaflow jobs`` and ``pandaflow job ID``)."""
    from pandaflow.server.front import queries
    from pandaflow.server.store.db import make_engine

    engine = make_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return {
                app: [queries.get_job(conn, job["id"]) for job in queries.list_jobs(conn, name=app)["jobs"]]
                for app in ("flaky_fetch", "hungry")
            }
    finally:
        engine.dispose()


def outcome(run: dict[str, Any]) -> str:
    """How a job or one of its attempts ended, with the error the pilot reported."""
    if run["error_code"] == 0:
        return run["status"]
    return f"{run['status']}: error {run['error_code']} {run['error_name']}: {run['error_diag']}"


if __name__ == "__main__":
    sys.exit(main())
