"""The pilot's environment check: can this node run payloads at all?

Run once before the pilot asks for work, so a broken node fails fast with ENV_CHECK_FAILED
instead of failing every job it receives.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import socket
import sys
import uuid
from dataclasses import asdict, dataclass

import psutil

MIN_PYTHON = (3, 12)
"""Oldest interpreter the pilot and the payload worker support."""

PAYLOAD_MODULES = ("parsl", "parsl.serialize", "parsl.executors.execute_task", "parsl.app.errors")
"""Modules a Python payload's worker needs to unpack a task and pack its result."""


def _check_workdir(workdir: str) -> list[str]:
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as exc:
        return [f"work directory {workdir!r} does not exist and cannot be created: {exc.strerror or exc}"]
    if not os.path.isdir(workdir):
        return [f"work directory {workdir!r} is not a directory"]
    # os.access() lies on some network file systems and for root, so really write a file.
    probe = os.path.join(workdir, f".pandaflow-probe-{uuid.uuid4().hex}")
    try:
        with open(probe, "wb") as f:
            f.write(b"pandaflow write probe\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return [f"work directory {workdir!r} is not writable: {exc.strerror or exc}"]
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    return []


def _check_disk(workdir: str, min_free_disk_mb: int) -> list[str]:
    try:
        free_mb = shutil.disk_usage(workdir).free / (1024 * 1024)
    except OSError as exc:
        return [f"cannot determine free disk space of {workdir!r}: {exc.strerror or exc}"]
    if free_mb < min_free_disk_mb:
        return [f"only {free_mb:.0f} MB free in {workdir!r}, need at least {min_free_disk_mb} MB"]
    return []


def _check_modules() -> list[str]:
    problems = []
    for name in PAYLOAD_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an import can fail with anything, not only ImportError
            problems.append(f"cannot import {name}: {type(exc).__name__}: {exc}")
    return problems


def _check_python() -> list[str]:
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return [f"Python {platform.python_version()} at {sys.executable} is too old, need >= {need}"]
    return []


def check_environment(workdir: str, min_free_disk_mb: int = 100) -> list[str]:
    """Check that payloads can run here; return human-readable problems (empty: all good).

    Checks that ``workdir`` exists or can be created and really accepts a file, that it has at
    least ``min_free_disk_mb`` MB free, that the modules Python payloads need import, and that
    the interpreter is recent enough.
    """
    problems = _check_workdir(workdir)
    if not problems:  # disk space of a directory that does not exist is meaningless
        problems += _check_disk(workdir, min_free_disk_mb)
    problems += _check_modules()
    problems += _check_python()
    return problems


@dataclass(slots=True)
class HostInfo:
    """What a pilot reports about the node it runs on."""

    hostname: str
    cpu_count: int
    total_memory_mb: int
    python_version: str
    python_executable: str
    platform: str

    def as_dict(self) -> dict[str, object]:
        """The fields as a plain dict (for JSON or msgpack)."""
        return asdict(self)


def describe_host() -> HostInfo:
    """Summarise this host: name, cores, memory and Python."""
    return HostInfo(
        hostname=socket.gethostname(),
        cpu_count=os.cpu_count() or 1,
        total_memory_mb=int(psutil.virtual_memory().total // (1024 * 1024)),
        python_version=platform.python_version(),
        python_executable=sys.executable,
        platform=platform.platform(),
    )
