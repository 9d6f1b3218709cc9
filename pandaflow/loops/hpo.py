"""Hyperparameter optimisation: an Optuna study in the driver's memory, its trials run as jobs.

The study uses Optuna's ask-and-tell interface and one of its samplers; it never touches a
database. The job server is the durable record (see :mod:`pandaflow.loops.driver`): on a
restart with the same name the study is rebuilt from the recorded trials.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from pandaflow.loops import space as spaces
from pandaflow.loops.driver import Driver, Trial, check_name, check_options, default_name
from pandaflow.loops.errors import LoopInputError

SAMPLERS = ("tpe", "random", "cmaes", "gp")
DIRECTIONS = ("minimize", "maximize")


def make_sampler(sampler: Any, seed: int | None) -> Any:
    """An Optuna sampler from its name (``"tpe"``, ``"random"``, ``"cmaes"``, ``"gp"``), or the
    sampler object given."""
    import optuna

    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "tpe":
            # constant_liar: trials in flight count as bad guesses, so parallel asks spread out.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if sampler == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise LoopInputError(
                    "sampler='cmaes' needs the cmaes package: pip install 'pandaflow[loops]'"
                ) from None
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if sampler == "gp":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise LoopInputError(
                    "sampler='gp' is Optuna's GPSampler, which needs PyTorch: pip install torch "
                    "(or use 'tpe', 'random' or 'cmaes')"
                ) from None
            return optuna.samplers.GPSampler(seed=seed)
    raise LoopInputError(f"sampler={sampler!r}: give one of {', '.join(SAMPLERS)} or an optuna sampler")


@dataclass
class StudyResult:
    """What :func:`optimize` found."""

    name: str
    best_params: dict[str, Any] | None
    best_value: float | None
    best_trial: Trial | None
    trials: list[Trial]
    study: Any  # the optuna.Study, for Optuna's own analysis and plots

    @property
    def complete(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "complete"]

    @property
    def failed(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "failed"]


class _Study:
    def __init__(self, dists: dict[str, Any], direction: str, sampler: Any):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.dists, self.direction = optuna, dists, direction
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        self.open: dict[int, Any] = {}
        self.best: Trial | None = None
        self.done = 0
        self.budget = 0

    def _better(self, trial: Trial) -> bool:
        if trial.value is None:
            return False
        if self.best is None:
            return True
        assert self.best.value is not None
        return (
            trial.value < self.best.value if self.direction == "minimize" else trial.value > self.best.value
        )

    def resume(self, trial: Trial) -> None:
        state = self.optuna.trial.TrialState
        frozen = self.optuna.trial.create_trial(
            params=trial.params,
            distributions=self.dists,
            value=trial.value,
            state=state.COMPLETE if trial.state == "complete" else state.FAIL,
        )
        self.study.add_trial(frozen)
        self._count(trial)

    def ask(self, number: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        if params is not None:
            self.study.enqueue_trial(params, skip_if_exists=False)
        trial = self.study.ask(self.dists)
        self.open[number] = trial
        return dict(trial.params)

    def tell(self, trial: Trial) -> None:
        state = self.optuna.trial.TrialState
        asked = self.open.pop(trial.number)
        if trial.state == "complete":
            self.study.tell(asked, trial.value)
        else:
            self.study.tell(asked, state=state.FAIL)
        self._count(trial)

    def _count(self, trial: Trial) -> None:
        self.done += 1
        if self._better(trial):
            self.best = trial

    def progress(self, trial: Trial) -> str:
        best = self.best
        assert best is not None
        return (
            f"trial {trial.number}: {trial.value:.6g}   best {best.value:.6g} (trial {best.number})   "
            f"{self.done}/{self.budget}"
        )

    def summary(self) -> dict[str, Any]:
        best = self.best
        return {
            "best_number": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": best.params if best else None,
        }


def optimize(
    objective: Any,
    space: dict[str, Any],
    n_trials: int,
    *,
    parallelism: int = 4,
    sampler: Any = "tpe",
    name: str | None = None,
    direction: str = "minimize",
    seed: int | None = None,
    on_failure: str = "retry",
    max_retries: int = 2,
    executor: str | None = None,
    resource_specification: dict[str, Any] | None = None,
    workdir: str | None = None,
    timeout: float | None = None,
    verbose: bool = True,
) -> StudyResult:
    """Search ``space`` for the parameters that minimise (or maximise) ``objective``.

    Args:
        objective: a function of the parameter dict returning a number (run as a python app),
            or a command template with ``{params}`` and ``{result}`` placeholders (see
            :mod:`pandaflow.loops.objective`).
        space: ``{name: range or choices}`` in the forms of :mod:`pandaflow.loops.space`.
        n_trials: the budget: trials that end (complete or failed after their retries).
        parallelism: evaluations kept in flight; a new one is asked as soon as one ends.
        sampler: ``"tpe"``, ``"random"``, ``"cmaes"``, ``"gp"`` (needs PyTorch), or an Optuna sampler.
        name: the loop's name: a driver started again with the same name resumes it (default:
            derived from the objective and the settings, so rerunning a script resumes it).
        direction: ``"minimize"`` or ``"maximize"``.
        seed: the sampler's seed.
        on_failure: ``"retry"`` (up to ``max_retries`` more times, then the trial is failed and
            the loop goes on), ``"skip"`` (failed at once, the loop goes on) or ``"stop"``
            (raise :class:`~pandaflow.loops.errors.LoopStopped`).
        executor: the label of the parsl executor to use (default: the first PandaExecutor of
            the loaded config; if no config is loaded, an embedded PandaExecutor is started for
            the loop, with the run name ``loop-<name>``).
        resource_specification: what every evaluation asks for (``{"memory": 2000, ...}``).
        workdir: where command templates run, a directory per trial (default ``./<name>.trials``).
        timeout: seconds a command may run.
        verbose: print a line per trial.

    Raises:
        LoopInputError: bad ``space`` or option, before anything is submitted, or a loop of this
            name exists with other settings.
        LoopStopped: ``on_failure="stop"`` and a trial failed, or the first trials all failed.
    """
    from pandaflow.loops import objective as objectives

    objectives.check(objective)
    dists = spaces.distributions(space)
    check_options(n_trials, parallelism, on_failure, max_retries, "n_trials")
    if direction not in DIRECTIONS:
        raise LoopInputError(f"direction={direction!r}: give 'minimize' or 'maximize'")
    made = make_sampler(sampler, seed)
    sampler_name = sampler if isinstance(sampler, str) else type(sampler).__name__
    config = {
        "space": spaces.describe(dists),
        "sampler": sampler_name,
        "seed": seed,
        "objective": objective if isinstance(objective, str) else getattr(objective, "__name__", "?"),
    }
    name = check_name(name) if name is not None else default_name("hpo", objective, config)
    math = _Study(dists, direction, made)
    math.budget = n_trials
    driver = Driver(
        kind="hpo",
        name=name,
        config=config,
        budget=n_trials,
        objective=objective,
        parallelism=parallelism,
        on_failure=on_failure,
        max_retries=max_retries,
        direction=direction,
        executor=executor,
        resource_specification=resource_specification,
        workdir=workdir,
        timeout=timeout,
        verbose=verbose,
    )
    trials = driver.run(math)
    best = math.best
    return StudyResult(
        name, best.params if best else None, best.value if best else None, best, trials, math.study
    )
