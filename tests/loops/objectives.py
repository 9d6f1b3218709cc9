"""Objectives the loop tests evaluate on pilots (importable there through PYTHONPATH)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time


def shifted_sphere(params: dict) -> float:
    """Minimum 0 at x_i = 0.3 i."""
    return sum((params[f"x{i}"] - 0.3 * i) ** 2 for i in range(len(params)))


def two_blobs(params: dict) -> float:
    """A 2-D analytic surface with two islands above 0.5 in [-1, 1]^2 (a toy exclusion region)."""
    x, y = params["x"], params["y"]
    return math.exp(-((x - 0.35) ** 2 + (y + 0.2) ** 2) / 0.06) + 0.9 * math.exp(
        -((x + 0.45) ** 2 + (y - 0.45) ** 2) / 0.03
    )


def _mark(directory: str, params: dict) -> str:
    return os.path.join(
        directory, hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    )


def logged(params: dict) -> float:
    """Appends the evaluated point to $LOOP_LOG, sleeps $LOOP_SLEEP seconds, returns a quadratic."""
    with open(os.environ["LOOP_LOG"], "a") as f:
        f.write(json.dumps(params, sort_keys=True) + "\n")
    time.sleep(float(os.environ.get("LOOP_SLEEP", "0")))
    return (params["x"] - 1) ** 2


def fails_once(params: dict) -> float:
    """Fails on the first evaluation of each point (a marker file in $LOOP_MARKS), then succeeds."""
    mark = _mark(os.environ["LOOP_MARKS"], params)
    if not os.path.exists(mark):
        open(mark, "w").close()
        raise RuntimeError(f"transient failure at x={params['x']:.3f}")
    return params["x"] ** 2


def always_fails(params: dict) -> float:
    raise ValueError("the training diverged")


def not_a_number(params: dict) -> str:
    return "low"
