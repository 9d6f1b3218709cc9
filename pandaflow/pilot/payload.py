"""What a pilot's :class:`~pandaflow.pilot.runner.PayloadRunner` runs and what comes back.

:class:`Payload` is one attempt of a job as the pilot hands it over, :class:`Outcome` how it
ended (both are the wire messages of :mod:`pandaflow.protocol`: what the server sends is what
runs, and what the runner reports is what the server records), and :class:`RunningPayload` the
runner's own record of a payload while it runs (shared by the Python workers, the shell payloads
and the limit enforcement).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

import psutil

from pandaflow.protocol import Outcome, Payload

__all__ = ["Outcome", "Payload", "RunningPayload"]


PYTHON = "python"
SHELL = "shell"

TAIL_BYTES = 2048
"""Size of ``Outcome.stdout_tail`` and of the tail reported by
:meth:`~pandaflow.pilot.runner.PayloadRunner.running`."""

MAX_SAMPLES = 500
"""Memory samples kept per payload; longer series are thinned evenly."""

FIRST_SAMPLE_AFTER = 0.2
"""Seconds after start of a payload's first memory sample: late enough that short tasks are never
sampled (psutil is not on the hot path), early enough to catch a quickly growing one."""

# What the runner's selector reports (the first item of each key's data).
EV_RESULT, EV_DEATH, EV_SHELL, EV_WAKE = range(4)


@dataclass(slots=True, eq=False)
class RunningPayload:
    """A payload while it runs: the runner's bookkeeping (its process, memory samples, kill decision)."""

    payload: Payload
    started_at: float  # time.time()
    t0: float  # time.monotonic()
    next_sample: float
    deadline: float | None
    worker: Any = None  # the warm worker process running it (pandaflow.pilot.python_workers.Worker)
    popen: subprocess.Popen | None = None
    ps: psutil.Process | None = None
    pidfd: int | None = None
    log_path: str = ""
    rss: float = 0.0
    pss: float = 0.0
    max_rss: float = 0.0
    max_pss: float = 0.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    n_samples: int = 0
    stride: int = 1
    kill_code: int | None = None  # set once when the pilot decides to kill it
    kill_diag: str = ""
    tail: str = ""
    tail_at: float = -1.0
    reaped: bool = False
