"""Hyperparameter searches on an embedded PandaExecutor: the search works (TPE beats random),
failures follow their policy and are recorded, command templates keep their file contract, bad
input is refused before anything is submitted, and the server shows the loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
from objectives import always_fails, fails_once, not_a_number, shifted_sphere
from sqlalchemy import func, select

from pandaflow.client import Client
from pandaflow.loops import LoopInputError, LoopStopped, optimize
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import make_engine

SPACE4 = {f"x{i}": (-5.0, 5.0) for i in range(4)}


def _jobs(executor) -> int:
    engine = make_engine(executor.db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(s.jobs)).scalar_one()
    finally:
        engine.dispose()


def test_tpe_beats_random_search_on_the_same_budget_averaged_over_seeds(panda):
    best = {}
    for sampler in ("tpe", "random"):
        values = [
            optimize(
                shifted_sphere,
                SPACE4,
                40,
                parallelism=4,
                sampler=sampler,
                seed=seed,
                name=f"sphere-{sampler}-{seed}",
                verbose=False,
            ).best_value
            for seed in range(4)
        ]
        best[sampler] = float(np.mean(values))
    assert best["tpe"] < best["random"], best
    # Each trial was one job, grouped under the loop's workflow, a task per batch of 4.
    client = Client(panda.server_url, panda.token)
    loop = client.get_loop("sphere-tpe-0")
    assert (loop["status"], loop["done"], loop["counts"]["complete"]) == ("finished", 40, 40)
    workflow = client.get_workflow(loop["workflow_id"])
    assert workflow["name"] == "loop sphere-tpe-0" and workflow["n_jobs"] == 40
    assert [t["name"] for t in workflow["tasks"]] == [f"iteration {i:04d}" for i in range(10)]


def test_the_result_has_the_best_point_and_every_trial(panda):
    result = optimize(
        shifted_sphere, {"x0": (-2, 2), "x1": (-2, 2)}, 12, parallelism=3, seed=1, name="small", verbose=False
    )
    assert len(result.trials) == 12 and len(result.complete) == 12
    assert result.best_value == min(t.value for t in result.trials)
    assert result.best_params == result.best_trial.params
    assert len(result.study.trials) == 12  # the optuna study, for its own analysis
    best = Client(panda.server_url, panda.token).get_loop("small")["best"]
    assert best["value"] == pytest.approx(result.best_value) and best["params"] == result.best_params


@pytest.fixture
def marks(tmp_path, monkeypatch):
    """Where :func:`objectives.fails_once` marks the points it failed once (set before the pilots start)."""
    (tmp_path / "marks").mkdir()
    monkeypatch.setenv("LOOP_MARKS", str(tmp_path / "marks"))


def test_a_failing_objective_is_retried_and_its_error_recorded(marks, panda):
    result = optimize(fails_once, {"x": (-1, 1)}, 6, parallelism=2, seed=0, name="flaky", verbose=False)
    assert [t.state for t in result.trials] == ["complete"] * 6
    assert all(t.attempts == 2 and "transient failure at x=" in t.error for t in result.trials)
    recorded = Client(panda.server_url, panda.token).list_trials("flaky")["trials"]
    assert [(t["state"], t["attempts"]) for t in recorded] == [("complete", 2)] * 6
    assert all("RuntimeError: transient failure" in t["error"] for t in recorded)
    assert _jobs(panda) == 12  # two jobs per trial


def test_skip_records_failed_trials_and_stops_a_loop_whose_first_trials_all_fail(panda):
    with pytest.raises(LoopStopped, match="its first 5 trials all failed.*ValueError: the training diverged"):
        optimize(
            always_fails, {"x": (0, 1)}, 20, parallelism=2, on_failure="skip", name="broken", verbose=False
        )
    client = Client(panda.server_url, panda.token)
    loop = client.get_loop("broken")
    assert loop["status"] == "stopped" and "first 5 trials all failed" in loop["message"]
    assert loop["counts"]["failed"] >= 5 and loop["counts"]["complete"] == 0


def test_stop_raises_with_the_evaluation_error(panda):
    with pytest.raises(
        LoopStopped, match="on_failure='stop'.*EvaluationError: not_a_number.*gave 'low'"
    ) as info:
        optimize(not_a_number, {"x": (0, 1)}, 5, parallelism=1, on_failure="stop", name="nan", verbose=False)
    assert "return a finite number" in str(info.value.error)


COMMAND = 'python -c "import json,sys; p=json.load(open(sys.argv[1])); {body}" {{params}} {{result}}'


@pytest.mark.parametrize(
    ("body", "state", "says"),
    [
        ("json.dump({'value': (p['x'] - 0.5) ** 2}, open(sys.argv[2], 'w'))", "complete", ""),
        ("json.dump((p['x'] - 0.5) ** 2, open(sys.argv[2], 'w'))", "complete", ""),
        ("print('training...')", "failed", "exited 0 but wrote no result file"),
        ("open(sys.argv[2], 'w').write('loss=3')", "failed", "is not JSON"),
        ("json.dump({'loss': 1}, open(sys.argv[2], 'w'))", "failed", 'an object without "value"'),
        (
            "print('out of memory'); sys.exit(3)",
            "failed",
            "exited with code 3; its output .* ends:\nout of memory",
        ),
    ],
)
def test_a_command_template_reads_its_params_file_and_its_result_is_validated(
    panda, tmp_path, body, state, says
):
    result = optimize(
        COMMAND.format(body=body),
        {"x": (0.0, 1.0)},
        2,
        parallelism=2,
        on_failure="skip",
        name=f"cmd-{abs(hash(body)) % 10**8}",
        workdir=str(tmp_path / "trials"),
        verbose=False,
    )
    assert [t.state for t in result.trials] == [state, state]
    if state == "complete":
        x = result.trials[0].params["x"]
        assert result.trials[0].value == pytest.approx((x - 0.5) ** 2)
        written = json.loads((tmp_path / "trials" / "trial-00000" / "params.json").read_text())
        assert written == result.trials[0].params
    else:
        import re

        assert re.search(says, result.trials[0].error), result.trials[0].error


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (dict(space={"x": (1, 0)}), "low must be below high"),
        (dict(n_trials=0), "n_trials=0: give a whole number >= 1"),
        (dict(parallelism=0), "parallelism=0"),
        (dict(sampler="bayes"), "sampler='bayes': give one of tpe, random, cmaes, gp"),
        (dict(direction="down"), "direction='down'"),
        (dict(on_failure="ignore"), "on_failure='ignore'"),
        (dict(objective="train.sh"), "lacks {params} and {result}"),
        (dict(objective=3), "objective must be a function"),
        (dict(name="no spaces"), "a loop name is"),
    ],
)
def test_bad_input_is_refused_before_anything_is_submitted(panda, call, says):
    args = {"objective": shifted_sphere, "space": {"x0": (0, 1)}, "n_trials": 3, **call}
    with pytest.raises(LoopInputError, match=says):
        optimize(
            args.pop("objective"),
            args.pop("space"),
            args.pop("n_trials"),
            name=args.pop("name", "bad"),
            verbose=False,
            **args,
        )
    assert _jobs(panda) == 0
    assert Client(panda.server_url, panda.token).list_loops()["total"] == 0


def test_the_same_name_with_other_settings_is_refused(panda):
    optimize(shifted_sphere, {"x0": (0, 1)}, 2, parallelism=2, name="same", verbose=False)
    with pytest.raises(
        LoopInputError, match="a loop named 'same' exists with other settings \\(space differ"
    ):
        optimize(shifted_sphere, {"x0": (0, 2)}, 2, parallelism=2, name="same", verbose=False)


@pytest.mark.parametrize("sampler", ["cmaes", "random"])
def test_other_samplers_run(panda, sampler):
    result = optimize(
        shifted_sphere,
        {"x0": (-1, 1), "x1": (-1, 1)},
        8,
        parallelism=2,
        sampler=sampler,
        seed=2,
        name=f"s-{sampler}",
        verbose=False,
    )
    assert len(result.complete) == 8


def test_a_loop_runs_on_another_parsl_executor_without_a_record(load_parsl, capsys):
    from parsl.executors.threads import ThreadPoolExecutor

    load_parsl(ThreadPoolExecutor(label="threads", max_threads=2))
    result = optimize(shifted_sphere, {"x0": (-1, 1)}, 6, parallelism=2, seed=0, name="threads")
    assert len(result.complete) == 6
    out = capsys.readouterr().out
    assert "is not a PandaExecutor: this loop is not recorded (no resume)" in out
    assert "[threads] trial 0:" in out


def test_the_gp_sampler_says_what_it_needs_when_pytorch_is_missing(panda):
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(LoopInputError, match="GPSampler, which needs PyTorch: pip install torch"):
            optimize(shifted_sphere, {"x0": (0, 1)}, 2, sampler="gp", name="gp", verbose=False)
        assert _jobs(panda) == 0
    else:
        result = optimize(
            shifted_sphere, {"x0": (0, 1)}, 4, parallelism=2, sampler="gp", name="gp", verbose=False
        )
        assert len(result.complete) == 4


def test_an_embedded_executor_without_a_run_name_says_the_loop_cannot_resume(panda, capsys):
    optimize(shifted_sphere, {"x0": (0, 1)}, 2, parallelism=2, name="unnamed")
    assert "has no run_name: its embedded server keeps this run's database" in capsys.readouterr().out
