"""The model of a limit surface: a scikit-learn Gaussian process over the box, fitted to the
evaluated points, that classifies any point as above or below the threshold.

Coordinates are scaled to the unit cube; values are compared with the threshold. The next point
to evaluate is the candidate where the model is least sure which side it is on: the "straddle"
heuristic of Bryan et al. (2005), ``1.96 * sigma - |mu - threshold|``, maximal on the surface
where the uncertainty is largest. Evaluations still in flight are put in as if their value were
the model's prediction ("kriging believer"), so points asked while others run spread out.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_CANDIDATES = 2048
_ACCURACY_SAMPLE = 4096


def _gp(length: int) -> Any:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF([0.2] * length, (1e-2, 1e1)) + WhiteKernel(
        1e-5, (1e-9, 1e-1)
    )
    return GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0)


@dataclass
class SurfaceModel:
    """Which side of ``threshold`` a point of the box is on, learned from evaluations."""

    names: list[str]
    lows: np.ndarray
    highs: np.ndarray
    threshold: float
    points: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    gp: Any = None

    # ---------------------------------------------------------------- coordinates
    def unit(self, points: Any) -> np.ndarray:
        """Points (dicts, or rows in the order of :attr:`names`) scaled to the unit cube."""
        return (self._array(points) - self.lows) / (self.highs - self.lows)

    def _array(self, points: Any) -> np.ndarray:
        if isinstance(points, Mapping):
            points = [points]
        if isinstance(points, Sequence) and points and isinstance(points[0], Mapping):
            points = [[p[n] for n in self.names] for p in points]
        array = np.asarray(points, dtype=float)
        return array.reshape(-1, len(self.names))

    def point(self, unit_row: np.ndarray) -> dict[str, float]:
        row = self.lows + np.asarray(unit_row) * (self.highs - self.lows)
        return {n: float(v) for n, v in zip(self.names, row, strict=True)}

    # ---------------------------------------------------------------- fitting
    def fit(self, points: Any, values: Sequence[float]) -> SurfaceModel:
        """Fit to evaluated points and their values (at least two points)."""
        self.points, self.values = self._array(points), np.asarray(values, dtype=float)
        self.gp = _gp(len(self.names))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter of the hyperparameter search
            self.gp.fit(self.unit(self.points), self.values - self.threshold)
        return self

    def predict(self, points: Any) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the value at ``points``."""
        mean, std = self.gp.predict(self.unit(points), return_std=True)
        return mean + self.threshold, std

    def probability_above(self, points: Any) -> np.ndarray:
        """The model's probability that the value at each point is above the threshold."""
        from scipy.stats import norm

        mean, std = self.predict(points)
        return norm.cdf((mean - self.threshold) / np.maximum(std, 1e-12))

    def classify(self, points: Any) -> np.ndarray:
        """``True`` where the value is predicted above the threshold."""
        mean, _ = self.predict(points)
        return mean > self.threshold

    def estimated_accuracy(self, seed: int = 0) -> float:
        """The model's own estimate of the share of the box it classifies right: the mean, over a
        uniform sample of the box, of the probability of the side it predicts."""
        p = self.probability_above(self._sample(_ACCURACY_SAMPLE, seed))
        return float(np.mean(np.maximum(p, 1.0 - p)))

    def _sample(self, n: int, seed: int) -> np.ndarray:
        from scipy.stats import qmc

        unit = qmc.Sobol(len(self.names), seed=seed).random(n)
        return self.lows + unit * (self.highs - self.lows)

    # ---------------------------------------------------------------- the next point
    def next_point(self, pending: Sequence[Mapping[str, float]], seed: int) -> dict[str, float]:
        """The candidate the model is least sure about, given the points still being evaluated."""
        rng = np.random.default_rng(seed)
        model = self
        if pending:
            believed, _ = self.predict(list(pending))
            model = SurfaceModel(self.names, self.lows, self.highs, self.threshold)
            model.points = np.vstack([self.points, self._array(list(pending))])
            model.values = np.concatenate([self.values, believed])
            from sklearn.gaussian_process import GaussianProcessRegressor

            model.gp = GaussianProcessRegressor(kernel=self.gp.kernel_, normalize_y=True, optimizer=None)
            model.gp.fit(model.unit(model.points), model.values - self.threshold)
        candidates = self.lows + rng.random((_CANDIDATES, len(self.names))) * (self.highs - self.lows)
        mean, std = model.predict(candidates)
        score = 1.96 * std - np.abs(mean - self.threshold)
        return self.point(self.unit(candidates[int(np.argmax(score))])[0])


def initial_design(
    lows: np.ndarray, highs: np.ndarray, names: list[str], n: int, seed: int
) -> list[dict[str, float]]:
    """``n`` points spread over the box by a Latin hypercube (the same for the same seed)."""
    from scipy.stats import qmc

    unit = qmc.LatinHypercube(len(names), seed=seed).random(n)
    rows = lows + unit * (highs - lows)
    return [{k: float(v) for k, v in zip(names, row, strict=True)} for row in rows]
