"""Active learning of a 2-D exclusion limit, each evaluation a job on the embedded server.

    python examples/loops/limit_surface.py [--budget 48] [--batch-size 4] [--name dark-photon]

A toy dark-sector search: the expected significance of a signal of a given mass (MeV) and
coupling, against a background that grows at low mass. Points whose significance is above 1.64
are excluded at 95% confidence; the loop finds the boundary of that region with a Gaussian
process, evaluating near it rather than over a whole grid. Each evaluation stands for a
simulation (it sleeps 0.1 s). At the end the model is compared with the true region on a fine
grid, and with what a regular grid of evaluations would have reached.
"""

from __future__ import annotations

import argparse

import numpy as np

from pandaflow.loops import active_learning

BOUNDS = {"mass": (10.0, 1000.0), "log10_coupling": (-4.0, -1.0)}
THRESHOLD = 1.64  # one-sided 95% confidence


def significance(point: dict, simulate: bool = True) -> float:
    """Expected signal significance at one (mass, coupling) point (runs on a pilot's worker)."""
    import math
    import time

    if simulate:
        time.sleep(0.1)  # a simulation would run here
    mass, coupling = point["mass"], 10.0 ** point["log10_coupling"]
    signal = 4e7 * coupling**2 * math.exp(-mass / 400.0) * (1.0 - math.exp(-mass / 40.0))
    background = 50.0 + 4000.0 * math.exp(-mass / 60.0)
    return signal / math.sqrt(background)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--name", default="dark-photon")
    args = parser.parse_args()

    result = active_learning(
        significance,
        BOUNDS,
        THRESHOLD,
        batch_size=args.batch_size,
        budget=args.budget,
        seed=2,
        name=args.name,
    )
    masses = np.linspace(*BOUNDS["mass"], 100)
    couplings = np.linspace(*BOUNDS["log10_coupling"], 100)
    grid = np.array([[m, c] for m in masses for c in couplings])
    truth = (
        np.array([significance({"mass": m, "log10_coupling": c}, simulate=False) for m, c in grid])
        > THRESHOLD
    )
    accuracy = float(np.mean(result.model.classify(grid) == truth))
    print(
        f"{len(result.points)} evaluations: the model classifies {accuracy:.1%} of a 100x100 grid right "
        f"(its own estimate: {result.estimated_accuracy:.1%}); excluded: {truth.mean():.0%} of the box"
    )
    from pandaflow.loops import SurfaceModel

    for k in range(3, 40):
        axis_m, axis_c = np.linspace(*BOUNDS["mass"], k), np.linspace(*BOUNDS["log10_coupling"], k)
        design = [{"mass": m, "log10_coupling": c} for m in axis_m for c in axis_c]
        model = SurfaceModel(list(BOUNDS), np.array([10.0, -4.0]), np.array([1000.0, -1.0]), THRESHOLD)
        model.fit(design, [significance(p, simulate=False) for p in design])
        if np.mean(model.classify(grid) == truth) >= accuracy:
            print(f"a regular grid needs {k}x{k} = {k * k} evaluations for the same accuracy")
            break
    else:
        print("a regular grid of up to 39x39 evaluations does not reach the same accuracy")
    print(f"see every evaluation: pandaflow loop {result.name}")


if __name__ == "__main__":
    main()
