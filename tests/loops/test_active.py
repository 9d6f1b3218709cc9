"""Active learning of a known 2-D limit surface: it reaches a stated accuracy with fewer
evaluations than a regular grid needs to reach the same accuracy with the same model."""

from __future__ import annotations

import numpy as np
import pytest
from objectives import two_blobs

from pandaflow.client import Client
from pandaflow.loops import LoopInputError, active_learning
from pandaflow.loops.surface import SurfaceModel

BOUNDS = {"x": (-1.0, 1.0), "y": (-1.0, 1.0)}
THRESHOLD = 0.5
BUDGET = 60
TARGET = 0.98  # share of a fine test grid classified right


def _test_grid() -> tuple[np.ndarray, np.ndarray]:
    g = np.linspace(-1, 1, 121)
    points = np.array([[a, b] for a in g for b in g])
    truth = np.array([two_blobs({"x": a, "y": b}) for a, b in points]) > THRESHOLD
    return points, truth


def _grid_accuracy(k: int, points: np.ndarray, truth: np.ndarray) -> float:
    g = np.linspace(-1, 1, k)
    design = [{"x": a, "y": b} for a in g for b in g]
    model = SurfaceModel(["x", "y"], np.array([-1.0, -1.0]), np.array([1.0, 1.0]), THRESHOLD)
    model.fit(design, [two_blobs(p) for p in design])
    return float(np.mean(model.classify(points) == truth))


def test_active_learning_beats_a_grid_on_a_known_surface(panda):
    result = active_learning(
        two_blobs, BOUNDS, THRESHOLD, batch_size=4, budget=BUDGET, seed=3, name="blobs", verbose=False
    )
    points, truth = _test_grid()
    accuracy = float(np.mean(result.model.classify(points) == truth))
    assert len(result.points) == BUDGET
    assert accuracy >= TARGET, accuracy
    # The model's own estimate is close to the truth.
    assert result.estimated_accuracy == pytest.approx(accuracy, abs=0.04)
    # A k x k grid fitted with the same model needs more evaluations to be as accurate.
    k = next(k for k in range(3, 30) if _grid_accuracy(k, points, truth) >= accuracy)
    assert k * k > BUDGET, (k, accuracy)
    # The evaluations after the initial design went near the surface, not over the whole box.
    near = np.mean([abs(v - THRESHOLD) < 0.3 for v in result.values[10:]])
    everywhere = np.mean([abs(two_blobs({"x": a, "y": b}) - THRESHOLD) < 0.3 for a, b in points])
    assert near > 3 * everywhere, (near, everywhere)
    loop = Client(panda.server_url, panda.token).get_loop("blobs")
    assert loop["kind"] == "active_learning" and loop["summary"]["points"] == BUDGET
    assert loop["summary"]["estimated_accuracy"] == pytest.approx(result.estimated_accuracy)


def test_the_model_classifies_any_point(panda):
    result = active_learning(
        two_blobs, BOUNDS, THRESHOLD, batch_size=2, budget=30, seed=1, name="few", verbose=False
    )
    model = result.model
    assert list(model.classify([{"x": 0.35, "y": -0.2}, {"x": -0.9, "y": -0.9}])) == [True, False]
    p = model.probability_above([[0.35, -0.2]])
    assert p.shape == (1,) and p[0] > 0.9
    mean, std = model.predict([[0.35, -0.2]])
    assert mean[0] > THRESHOLD and std[0] >= 0


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (dict(bounds={"x": (1, 0)}), "low < high"),
        (dict(bounds=[]), "non-empty"),
        (dict(threshold=float("nan")), "threshold=nan: give a finite number"),
        (dict(budget=0), "budget=0"),
        (dict(batch_size=0), "parallelism=0"),
        (dict(initial=1), "initial=1"),
        (dict(evaluate="run.sh {params}"), "lacks {result}"),
    ],
)
def test_bad_bounds_or_options_are_refused_before_anything_is_submitted(panda, call, says):
    args = {"evaluate": two_blobs, "bounds": BOUNDS, "threshold": THRESHOLD, **call}
    with pytest.raises(LoopInputError, match=says):
        active_learning(
            args.pop("evaluate"), args.pop("bounds"), args.pop("threshold"), name="bad", verbose=False, **args
        )
    assert Client(panda.server_url, panda.token).list_loops()["total"] == 0
