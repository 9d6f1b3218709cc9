"""Loops driven from a script or a notebook: hyperparameter searches (:func:`optimize`, on
Optuna) and active learning of a limit surface (:func:`active_learning`, on scikit-learn Gaussian
processes), their evaluations run as parsl apps on the loaded config (an embedded
:class:`~pandaflow.executors.PandaExecutor` if none is loaded), recorded on the job server, and
resumed by name after a crash. Needs the ``pandaflow[loops]`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pandaflow.loops.errors import EvaluationError, LoopInputError, LoopStopped

if TYPE_CHECKING:
    from pandaflow.loops.active import SurfaceResult, active_learning
    from pandaflow.loops.driver import Trial
    from pandaflow.loops.hpo import StudyResult, optimize
    from pandaflow.loops.surface import SurfaceModel

__all__ = [
    "EvaluationError",
    "LoopInputError",
    "LoopStopped",
    "StudyResult",
    "SurfaceModel",
    "SurfaceResult",
    "Trial",
    "active_learning",
    "optimize",
]

_LAZY = {
    "optimize": "pandaflow.loops.hpo",
    "StudyResult": "pandaflow.loops.hpo",
    "active_learning": "pandaflow.loops.active",
    "SurfaceResult": "pandaflow.loops.active",
    "SurfaceModel": "pandaflow.loops.surface",
    "Trial": "pandaflow.loops.driver",
}


def __getattr__(name: str) -> Any:
    """Import the mathematics (Optuna, scikit-learn) only when used: ``import pandaflow.loops``
    works without the extra, and says what to install when it is missing."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pandaflow.loops' has no attribute {name!r}")
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ImportError(f"pandaflow.loops.{name} needs {exc.name}: pip install 'pandaflow[loops]'") from exc
