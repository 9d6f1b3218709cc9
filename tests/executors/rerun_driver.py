"""A parsl script the tests run, kill and run again: ``N`` tasks, each appending its index to
``OUT/executions`` when it runs; the driver prints ``result I`` as each result arrives.

Arguments: OUT N SECONDS [run_name|-] [server_url|-] [orphan_grace|-]
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import as_completed

import parsl
from parsl import python_app
from parsl.config import Config

from pandaflow.executors import PandaExecutor


@python_app
def work(i: int, seconds: float, out: str, parsl_resource_specification=None) -> int:
    import os
    import time

    with open(os.path.join(out, "executions"), "a") as f:
        f.write(f"{i}\n")
    time.sleep(seconds)
    return i * i


def main() -> None:
    out, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    run_name, server_url, grace = (a if a != "-" else None for a in (sys.argv[4:7] + ["-"] * 3)[:3])
    options = {"workers": 2}
    if server_url:
        options.update(server_url=server_url, token=os.environ["PANDAFLOW_TOKEN"])
    if grace is not None:
        options["orphan_grace"] = float(grace)
    parsl.load(Config(executors=[PandaExecutor(label="panda", run_name=run_name, **options)]))
    futures = [work(i, seconds, out) for i in range(n)]
    print("submitted", flush=True)
    for fut in as_completed(futures):
        print("result", int(fut.result() ** 0.5), flush=True)
    parsl.dfk().cleanup()
    print("done", flush=True)


if __name__ == "__main__":
    main()
