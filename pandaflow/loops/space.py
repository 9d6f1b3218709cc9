"""Search spaces as plain dicts, turned into Optuna distributions.

=================================  =============================================
``space`` value                    parameter
=================================  =============================================
``(low, high)``                    a float in [low, high] (uniform)
``(low, high, "log")``             a float in [low, high], log-uniform (low > 0)
``(low, high, "int")``             an integer in [low, high]
``(low, high, "int", "log")``      an integer, log-uniform (low >= 1)
``(low, high, step)``              a float on the grid low, low+step, ... high
``[a, b, c]``                      one of the choices (None, bool, int, float, str)
an Optuna distribution             itself (``optuna.distributions.IntDistribution(...)``)
=================================  =============================================

Lists in JSON (a space read from a file) work like tuples when they hold two numbers and
optional flags: ``[0.001, 0.1, "log"]``. A list of anything else is a list of choices.

Bounds for active learning (:func:`box`) are ``{name: (low, high)}`` or a list of ``(low, high)``
pairs (the names are then ``x0``, ``x1``, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pandaflow.loops.errors import LoopInputError

FORMS = (
    "(low, high) for a float, (low, high, 'log') for log scale, (low, high, 'int') for an integer, "
    "(low, high, step) for a float grid, [a, b, c] for choices, or an optuna distribution"
)
_FLAGS = {"log", "int"}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _range(name: str, value: Sequence[Any]) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    low, high, *rest = value
    flags = {r for r in rest if isinstance(r, str)}
    steps = [r for r in rest if _number(r)]
    if flags - _FLAGS or len(steps) + len(flags) != len(rest) or len(steps) > 1:
        raise LoopInputError(
            f"space[{name!r}] = {value!r}: after (low, high) give 'log', 'int' or a step; {FORMS}"
        )
    if not low < high:
        raise LoopInputError(f"space[{name!r}] = {value!r}: low must be below high")
    log = "log" in flags
    if log and low <= 0:
        raise LoopInputError(f"space[{name!r}] = {value!r}: a log scale needs low > 0")
    if steps and log:
        raise LoopInputError(f"space[{name!r}] = {value!r}: give a step or 'log', not both")
    if steps and not steps[0] > 0:
        raise LoopInputError(f"space[{name!r}] = {value!r}: the step must be positive")
    if "int" in flags:
        if int(low) != low or int(high) != high:
            raise LoopInputError(f"space[{name!r}] = {value!r}: an integer range needs whole-number bounds")
        step = steps[0] if steps else 1
        if int(step) != step:
            raise LoopInputError(f"space[{name!r}] = {value!r}: an integer range needs a whole-number step")
        return IntDistribution(int(low), int(high), log=log, step=int(step))
    if steps:
        return FloatDistribution(float(low), float(high), step=float(steps[0]))
    return FloatDistribution(float(low), float(high), log=log)


def _choices(name: str, value: Sequence[Any]) -> Any:
    from optuna.distributions import CategoricalDistribution

    if not value:
        raise LoopInputError(f"space[{name!r}] = []: give at least one choice")
    for choice in value:
        if not (choice is None or isinstance(choice, (bool, int, float, str))):
            raise LoopInputError(
                f"space[{name!r}]: choice {choice!r} is a {type(choice).__name__}; choices are None, "
                "bool, int, float or str (map a name to an object inside the objective)"
            )
    if len(set(map(repr, value))) != len(value):
        raise LoopInputError(f"space[{name!r}] = {value!r}: a choice appears twice")
    return CategoricalDistribution(list(value))


def _is_range(value: Sequence[Any]) -> bool:
    return (
        len(value) >= 2
        and _number(value[0])
        and _number(value[1])
        and all(_number(v) or (isinstance(v, str) and v in _FLAGS) for v in value[2:])
    )


def distributions(space: Mapping[str, Any]) -> dict[str, Any]:
    """``space`` as ``{name: optuna distribution}``; :class:`LoopInputError` naming the first
    entry that is none of the :data:`FORMS`."""
    from optuna.distributions import BaseDistribution

    if not isinstance(space, Mapping) or not space:
        raise LoopInputError(f"space must be a non-empty dict of parameter name -> range or choices; {FORMS}")
    out: dict[str, Any] = {}
    for name, value in space.items():
        if not isinstance(name, str) or not name:
            raise LoopInputError(f"space: parameter names are non-empty strings, got {name!r}")
        if isinstance(value, BaseDistribution):
            out[name] = value
        elif isinstance(value, tuple):
            if not _is_range(value):
                raise LoopInputError(f"space[{name!r}] = {value!r}: a tuple is a range; {FORMS}")
            out[name] = _range(name, value)
        elif isinstance(value, list):
            out[name] = _range(name, value) if _is_range(value) else _choices(name, value)
        else:
            raise LoopInputError(f"space[{name!r}] = {value!r} ({type(value).__name__}): {FORMS}")
    return out


def describe(dists: Mapping[str, Any]) -> dict[str, Any]:
    """The distributions as JSON data (what a resumed loop must repeat)."""
    from optuna.distributions import distribution_to_json

    return {name: json.loads(distribution_to_json(d)) for name, d in dists.items()}


def box(bounds: Mapping[str, Any] | Sequence[Any]) -> tuple[list[str], list[float], list[float]]:
    """``(names, lows, highs)`` of a box given as ``{name: (low, high)}`` or ``[(low, high), ...]``."""
    if isinstance(bounds, Mapping):
        items = list(bounds.items())
    elif isinstance(bounds, Sequence) and not isinstance(bounds, str):
        items = [(f"x{i}", b) for i, b in enumerate(bounds)]
    else:
        items = []
    if not items:
        raise LoopInputError(
            "bounds must be a non-empty dict {name: (low, high)} or a list of (low, high) pairs, "
            f"got {bounds!r}"
        )
    names, lows, highs = [], [], []
    for name, pair in items:
        if not isinstance(name, str) or not name:
            raise LoopInputError(f"bounds: names are non-empty strings, got {name!r}")
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(_number(v) for v in pair)
            or not pair[0] < pair[1]
        ):
            raise LoopInputError(
                f"bounds[{name!r}] = {pair!r}: give (low, high), two finite numbers with low < high"
            )
        names.append(name)
        lows.append(float(pair[0]))
        highs.append(float(pair[1]))
    return names, lows, highs
