"""Search spaces and bounds as plain dicts: every documented form, and a clear error for the rest."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pandaflow.loops import LoopInputError
from pandaflow.loops.space import box, describe, distributions


def test_every_documented_form_becomes_its_distribution():
    dists = distributions(
        {
            "dropout": (0, 1),
            "lr": (1e-5, 1e-1, "log"),
            "layers": (1, 8, "int"),
            "width": (16, 1024, "int", "log"),
            "momentum": (0.5, 0.9, 0.1),
            "optimizer": ["adam", "sgd"],
            "from_json": [0.001, 0.1, "log"],
            "fixed": IntDistribution(2, 4, step=2),
        }
    )
    assert dists["dropout"] == FloatDistribution(0.0, 1.0)
    assert dists["lr"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert dists["layers"] == IntDistribution(1, 8)
    assert dists["width"] == IntDistribution(16, 1024, log=True)
    assert dists["momentum"] == FloatDistribution(0.5, 0.9, step=0.1)
    assert dists["optimizer"] == CategoricalDistribution(["adam", "sgd"])
    assert dists["from_json"] == FloatDistribution(0.001, 0.1, log=True)
    assert dists["fixed"] == IntDistribution(2, 4, step=2)
    assert describe(dists)["lr"]["attributes"]["log"] is True


@pytest.mark.parametrize(
    ("space", "says"),
    [
        ({}, "non-empty dict"),
        ([("x", (0, 1))], "non-empty dict"),
        ({"x": (1, 0)}, r"space\['x'\] = \(1, 0\): low must be below high"),
        ({"x": (0, 1, "log")}, "a log scale needs low > 0"),
        ({"x": (0, 1, "cubic")}, "a tuple is a range"),
        ({"x": (0.5, 3, "int")}, "whole-number bounds"),
        ({"x": (0, 1, -0.1)}, "the step must be positive"),
        ({"x": 3}, r"space\['x'\] = 3 \(int\)"),
        ({"x": []}, "give at least one choice"),
        ({"x": ["a", "a"]}, "a choice appears twice"),
        ({"x": [object]}, "choices are None, bool, int, float or str"),
        ({"x": (0, float("inf"))}, "a tuple is a range"),
    ],
)
def test_a_bad_space_is_refused_with_what_to_write(space, says):
    with pytest.raises(LoopInputError, match=says):
        distributions(space)


def test_bounds_as_a_dict_or_a_list_of_pairs():
    assert box({"mass": (10, 100), "coupling": [0.0, 1.0]}) == (
        ["mass", "coupling"],
        [10.0, 0.0],
        [100.0, 1.0],
    )
    assert box([(0, 1), (2, 3)]) == (["x0", "x1"], [0.0, 2.0], [1.0, 3.0])


@pytest.mark.parametrize(
    ("bounds", "says"),
    [
        ({}, "non-empty"),
        ("x", "non-empty"),
        ({"m": (5, 5)}, "low < high"),
        ({"m": (0, 1, 2)}, "give \\(low, high\\)"),
        ({"m": ("a", "b")}, "two finite numbers"),
    ],
)
def test_bad_bounds_are_refused(bounds, says):
    with pytest.raises(LoopInputError, match=says):
        box(bounds)
