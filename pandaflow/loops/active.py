"""Active learning of a limit surface: where in a box does ``evaluate`` cross ``threshold``?

The loop starts from a Latin-hypercube design, then, each time an evaluation ends, refits a
Gaussian process (:class:`~pandaflow.loops.surface.SurfaceModel`) and asks for the point it is
least sure about, keeping ``batch_size`` evaluations in flight. It spends its budget near the
surface instead of over the whole box, as a grid would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pandaflow.loops import space as spaces
from pandaflow.loops.driver import Driver, Trial, check_name, check_options, default_name
from pandaflow.loops.errors import LoopInputError
from pandaflow.loops.surface import SurfaceModel, initial_design


@dataclass
class SurfaceResult:
    """What :func:`active_learning` found."""

    name: str
    points: list[dict[str, float]]
    values: list[float]
    model: (
        SurfaceModel | None
    )  # classifies any point: model.classify(points), model.probability_above(points)
    estimated_accuracy: float | None
    trials: list[Trial]


class _Surface:
    def __init__(
        self,
        names: list[str],
        lows: list[float],
        highs: list[float],
        threshold: float,
        n_initial: int,
        seed: int,
        budget: int,
    ):
        self.names, self.seed, self.budget = names, seed, budget
        self.model = SurfaceModel(names, np.asarray(lows), np.asarray(highs), threshold)
        self.design = initial_design(self.model.lows, self.model.highs, names, n_initial, seed)
        self.points: list[dict[str, float]] = []
        self.values: list[float] = []
        self.pending: dict[int, dict[str, Any]] = {}
        self.fitted_on = 0
        self.done = 0

    def _fit(self) -> bool:
        if len(self.points) < 2:
            return False
        if self.fitted_on != len(self.points):
            self.model.fit(self.points, self.values)
            self.fitted_on = len(self.points)
        return True

    def resume(self, trial: Trial) -> None:
        self._add(trial)

    def _add(self, trial: Trial) -> None:
        self.done += 1
        if trial.state == "complete" and trial.value is not None:
            self.points.append({n: float(trial.params[n]) for n in self.names})
            self.values.append(float(trial.value))

    def ask(self, number: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        if params is None:
            if number < len(self.design):
                params = self.design[number]
            elif self._fit():
                params = self.model.next_point(list(self.pending.values()), self.seed * 100003 + number)
            else:  # too few complete points to model yet: keep exploring
                rng = np.random.default_rng(self.seed * 100003 + number)
                params = self.model.point(rng.random(len(self.names)))
        self.pending[number] = params
        return params

    def tell(self, trial: Trial) -> None:
        self.pending.pop(trial.number, None)
        self._add(trial)

    def accuracy(self) -> float | None:
        return self.model.estimated_accuracy(self.seed) if self._fit() else None

    def progress(self, trial: Trial) -> str:
        side = "above" if (trial.value or 0) > self.model.threshold else "below"
        acc = self.accuracy() if self.done >= len(self.design) else None
        told = f"   estimated accuracy {acc:.3f}" if acc is not None else ""
        return f"trial {trial.number}: {trial.value:.6g} ({side})   {self.done}/{self.budget}{told}"

    def summary(self) -> dict[str, Any]:
        acc = self.accuracy()
        above = sum(v > self.model.threshold for v in self.values)
        return {
            "estimated_accuracy": acc,
            "points": len(self.points),
            "above": above,
            "below": len(self.points) - above,
        }


def active_learning(
    evaluate: Any,
    bounds: Any,
    threshold: float,
    *,
    batch_size: int = 4,
    budget: int = 50,
    name: str | None = None,
    seed: int = 0,
    initial: int | None = None,
    on_failure: str = "retry",
    max_retries: int = 2,
    executor: str | None = None,
    resource_specification: dict[str, Any] | None = None,
    workdir: str | None = None,
    timeout: float | None = None,
    verbose: bool = True,
) -> SurfaceResult:
    """Find where ``evaluate`` crosses ``threshold`` in the box ``bounds``.

    Args:
        evaluate: a function of the point (a dict ``{name: value}``) returning a number, or a
            command template with ``{params}`` and ``{result}`` (see :mod:`pandaflow.loops.objective`).
        bounds: ``{name: (low, high)}``, or a list of ``(low, high)`` pairs (names ``x0``, ``x1``, ...).
        threshold: the value whose level set is the surface.
        batch_size: evaluations kept in flight.
        budget: evaluations in all (the initial design included).
        name: the loop's name; the same name resumes it (default: derived from the settings).
        seed: seeds the initial design and the candidates.
        initial: points of the initial design (default ``max(batch_size, 4 * dims + 2)``).
        on_failure: ``"retry"``, ``"skip"`` or ``"stop"``, as for :func:`pandaflow.loops.optimize`.
        max_retries: evaluations more of a failed point under ``"retry"``.
        executor: the parsl executor's label, as for :func:`pandaflow.loops.optimize`.
        resource_specification: what every evaluation asks for.
        workdir: where command templates run.
        timeout: seconds a command may run.
        verbose: print a line per evaluation.

    Returns:
        the evaluated points and values, the fitted :class:`~pandaflow.loops.surface.SurfaceModel`
        (``None`` if fewer than two evaluations succeeded) and its estimated accuracy.
    """
    from pandaflow.loops import objective as objectives

    objectives.check(evaluate, "evaluate")
    names, lows, highs = spaces.box(bounds)
    check_options(budget, batch_size, on_failure, max_retries, "budget")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise LoopInputError(f"threshold={threshold!r}: give a finite number")
    n_initial = initial if initial is not None else max(batch_size, 4 * len(names) + 2)
    if isinstance(n_initial, bool) or not isinstance(n_initial, int) or not 2 <= n_initial:
        raise LoopInputError(f"initial={initial!r}: give a whole number >= 2")
    n_initial = min(n_initial, budget)
    config = {
        "bounds": {n: [lo, hi] for n, lo, hi in zip(names, lows, highs, strict=True)},
        "threshold": float(threshold),
        "seed": seed,
        "initial": n_initial,
        "evaluate": evaluate if isinstance(evaluate, str) else getattr(evaluate, "__name__", "?"),
    }
    name = check_name(name) if name is not None else default_name("active", evaluate, config)
    math = _Surface(names, lows, highs, float(threshold), n_initial, seed, budget)
    driver = Driver(
        kind="active_learning",
        name=name,
        config=config,
        budget=budget,
        objective=evaluate,
        parallelism=batch_size,
        on_failure=on_failure,
        max_retries=max_retries,
        executor=executor,
        resource_specification=resource_specification,
        workdir=workdir,
        timeout=timeout,
        verbose=verbose,
    )
    trials = driver.run(math)
    fitted = math._fit()
    return SurfaceResult(
        name=name,
        points=math.points,
        values=math.values,
        model=math.model if fitted else None,
        estimated_accuracy=math.accuracy() if fitted else None,
        trials=trials,
    )
