"""Loop overhead: an HPO loop of a near-zero-cost objective through pandaflow, beside Optuna's own
ask-and-tell loop in one process with in-memory storage and with SQLite RDB storage.

pandaflow runs ``pandaflow.loops.optimize`` with ``parallelism`` evaluations in flight on an
embedded PandaExecutor (started before the clock starts; its start-up is printed apart): every
trial is a job through the server and a pilot, and is recorded on the server (parameters before
the job exists, value when it ends). Optuna runs ``study.ask`` / objective / ``study.tell`` in a
loop with the same sampler settings. All three use TPE with the same seed.

    python benchmarks/loops_overhead.py [--trials 500] [--parallelism 16] [--repeat 3]
                                        [--sampler tpe] [--workers 2] [--parsl-log warning|debug]

Prints each run, the medians, the overhead per trial against Optuna in-memory, and the ratios
(targets of the loops issue: pandaflow <= 2x in-memory, >= 5x faster than RDB).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import uuid


def objective(params: dict) -> float:
    return (params["x"] - 1.0) ** 2 + (params["y"] + 2.0) ** 2 + 0.1 * params["z"]


SPACE = {"x": (-5.0, 5.0), "y": (-5.0, 5.0), "z": (0, 10, "int")}


def optuna_loop(trials: int, sampler: str, seed: int, storage: str | None) -> float:
    import optuna

    from pandaflow.loops.hpo import make_sampler
    from pandaflow.loops.space import distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(SPACE)
    study = optuna.create_study(
        storage=storage, sampler=make_sampler(sampler, seed), study_name=f"bench-{uuid.uuid4().hex[:8]}"
    )
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(dists)
        study.tell(trial, objective(trial.params))
    return time.perf_counter() - start


def pandaflow_loop(trials: int, parallelism: int, sampler: str, seed: int) -> float:
    from pandaflow.loops import optimize

    start = time.perf_counter()
    result = optimize(
        objective,
        SPACE,
        trials,
        parallelism=parallelism,
        sampler=sampler,
        seed=seed,
        name=f"bench-{uuid.uuid4().hex[:8]}",
        verbose=False,
    )
    took = time.perf_counter() - start
    assert len(result.complete) == trials, f"{len(result.complete)} of {trials} trials completed"
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--parallelism", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="local pilot's worker slots")
    parser.add_argument(
        "--parsl-log",
        choices=["debug", "warning"],
        default="warning",
        help="parsl.log level: parsl's own default (debug, every task) or what the loops' "
        "own config uses (warning)",
    )
    args = parser.parse_args()

    import parsl
    from parsl.config import Config

    from pandaflow.executors import PandaExecutor

    work = tempfile.mkdtemp(prefix="pf-loops-bench-")
    os.environ["PANDAFLOW_HOME"] = os.path.join(work, "home")
    os.chdir(work)
    t0 = time.perf_counter()
    executor = PandaExecutor(label="panda", workers=args.workers)
    parsl.load(Config(executors=[executor], run_dir=os.path.join(work, "runinfo"), strategy="none"))
    if args.parsl_log == "warning":
        logging.getLogger("parsl").setLevel(logging.WARNING)
    while executor._epoch is None:  # the first pong: the executor reached its server
        time.sleep(0.01)
    print(f"embedded server and pilot started in {time.perf_counter() - t0:.2f} s (not counted below)")
    pandaflow_loop(20, min(args.parallelism, 4), args.sampler, 0)  # warm up the workers

    runs: dict[str, list[float]] = {"pandaflow": [], "optuna in-memory": [], "optuna SQLite RDB": []}
    try:
        for i in range(args.repeat):
            runs["optuna in-memory"].append(optuna_loop(args.trials, args.sampler, i, None))
            db = os.path.join(work, f"optuna-{i}.db")
            runs["optuna SQLite RDB"].append(optuna_loop(args.trials, args.sampler, i, f"sqlite:///{db}"))
            runs["pandaflow"].append(pandaflow_loop(args.trials, args.parallelism, args.sampler, i))
            print(f"run {i + 1}: " + "   ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()), flush=True)
    finally:
        parsl.dfk().cleanup()
        parsl.clear()
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"\n{args.trials} trials, sampler {args.sampler}, pandaflow parallelism {args.parallelism}, "
        f"{args.workers} worker slots, parsl.log at {args.parsl_log}; median of {args.repeat}:"
    )
    for k, v in med.items():
        print(f"  {k:18s} {v:7.2f} s   {1000 * v / args.trials:6.2f} ms/trial")
    overhead = (med["pandaflow"] - med["optuna in-memory"]) / args.trials
    print(f"  pandaflow overhead per trial over Optuna in-memory: {1000 * overhead:.2f} ms")
    print(f"  pandaflow / Optuna in-memory: {med['pandaflow'] / med['optuna in-memory']:.2f}x (target <= 2)")
    print(f"  Optuna RDB / pandaflow:       {med['optuna SQLite RDB'] / med['pandaflow']:.2f}x (target >= 5)")


if __name__ == "__main__":
    main()
