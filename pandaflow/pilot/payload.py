"""What a pilot's :class:`~pandaflow.pilot.runner.PayloadRunner` runs and what comes back.

:class:`Payload` is one attempt of a job as the pilot hands it over, :class:`Outcome` how it
ended, and :class:`RunningPayload` the runner's own record of a payload while it runs (shared by
the Python workers, the shell payloads and the limit enforcement).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from pandaflow.pilot.python_workers import Worker

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


@dataclass(slots=True)
class Payload:
    """One attempt of a job, as the pilot hands it to the runner."""

    job_id: int
    attempt: int
    kind: str  # "python" (parsl buffer) or "shell" (command line)
    buffer: bytes | None = None  # parsl pack_apply_message buffer, for kind="python"
    command: str | None = None  # for kind="shell"; run with /bin/bash -c
    env: dict[str, str] | None = None  # extra environment for shell commands
    cores: int = 1
    memory_mb: int | None = None  # limit: kill if the payload tree's RSS exceeds it
    walltime_s: float | None = None  # limit: kill if it runs longer


@dataclass(slots=True)
class Outcome:
    """How one payload attempt ended, with everything the server records about it."""

    job_id: int
    attempt: int
    ok: bool  # True: finished successfully
    error_code: int  # ErrorCode value, 0 when ok
    error_diag: str = ""  # one-line human diagnosis
    exit_code: int | None = None  # shell exit code
    result: bytes | None = None  # python: parsl-serialized result, or RemoteExceptionWrapper
    result_is_exception: bool = False
    stdout_tail: str = ""  # last ~2 KiB of combined stdout/stderr
    log: bytes = b""  # combined stdout+stderr, capped (tail kept, first line says so)
    max_rss_mb: float = 0.0
    max_pss_mb: float = 0.0
    started_at: float = 0.0  # time.time()
    ended_at: float = 0.0
    # (t - started_at, rss_mb, pss_mb) per memory sample, at most MAX_SAMPLES of them
    memory_samples: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class RunningPayload:
    """A payload while it runs: the runner's bookkeeping (its process, memory samples, kill decision)."""

    payload: Payload
    started_at: float  # time.time()
    t0: float  # time.monotonic()
    next_sample: float
    deadline: float | None
    worker: Worker | None = None
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
