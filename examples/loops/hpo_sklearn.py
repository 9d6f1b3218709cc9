"""Hyperparameter search of a scikit-learn model, each trial a job on the embedded server.

    python examples/loops/hpo_sklearn.py [--trials 24] [--parallelism 4] [--name svc-digits]

A support-vector classifier on the handwritten digits that ship with scikit-learn; the search
maximises its 3-fold cross-validated accuracy over C and gamma (log scales) and the kernel,
with Optuna's TPE sampler, keeping --parallelism trainings in flight. Kill it (Ctrl-C, or kill
-9) and run it again with the same --name: the trainings that finished are read back from the
server, not run again. Afterwards ``pandaflow loop NAME`` shows the trials.
"""

from __future__ import annotations

import argparse

from pandaflow.loops import optimize

SPACE = {
    "C": (1e-2, 1e3, "log"),  # a float on a log scale
    "gamma": (1e-5, 1e-1, "log"),
    "kernel": ["rbf", "sigmoid"],  # one of the choices
}


def cross_validated_accuracy(params: dict) -> float:
    """Train and score one point (this runs on a pilot's worker)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    model = SVC(C=params["C"], gamma=params["gamma"], kernel=params["kernel"])
    return float(cross_val_score(model, X / 16.0, y, cv=3).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--name", default="svc-digits")
    args = parser.parse_args()

    result = optimize(
        cross_validated_accuracy,
        SPACE,
        args.trials,
        parallelism=args.parallelism,
        direction="maximize",
        sampler="tpe",
        seed=1,
        name=args.name,
    )
    best = result.best_params
    print(
        f"best accuracy {result.best_value:.4f} with C={best['C']:.3g}, gamma={best['gamma']:.3g}, "
        f"kernel={best['kernel']} (trial {result.best_trial.number} of {len(result.trials)}; "
        f"{len(result.failed)} failed)"
    )
    print(f"see every trial: pandaflow loop {result.name}")


if __name__ == "__main__":
    main()
