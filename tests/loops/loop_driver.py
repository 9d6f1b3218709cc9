"""A loop script the tests run, SIGKILL and run again.

Arguments: NAME N_TRIALS PARALLELISM [SERVER_URL]. Without a server URL nothing is loaded and
the loop starts its own embedded PandaExecutor (the default); with one, the script loads a
PandaExecutor on that server with the run name ``loop-NAME``. Evaluations append their point to
``$LOOP_LOG`` (see :func:`objectives.logged`).
"""

from __future__ import annotations

import os
import sys

from objectives import logged

from pandaflow.loops import optimize


def main() -> None:
    name, n_trials, parallelism = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        import parsl
        from parsl.config import Config

        from pandaflow.executors import PandaExecutor

        executor = PandaExecutor(
            label="panda",
            server_url=sys.argv[4],
            token=os.environ["PANDAFLOW_TOKEN"],
            run_name=f"loop-{name}",
        )
        parsl.load(Config(executors=[executor]))
    result = optimize(logged, {"x": (-3.0, 3.0)}, n_trials, parallelism=parallelism, seed=7, name=name)
    print("best", result.best_value, "complete", len(result.complete), flush=True)


if __name__ == "__main__":
    main()
