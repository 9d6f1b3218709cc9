"""Signalling a payload's processes (its process group and every descendant), and saying how a
process ended."""

from __future__ import annotations

import os
import signal

import psutil

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ProcessLookupError)
"""What psutil raises about a process that is no longer there to signal."""


def signal_processes(root: psutil.Process | None, pgid: int, sig: int) -> None:
    """Signal ``root``, its process group and all its descendants."""
    descendants: list[psutil.Process] = []
    try:
        if root is not None and root.is_running():
            descendants = root.children(recursive=True)
    except GONE:
        pass
    signal_group(pgid, sig, root)
    for proc in [root, *descendants] if root is not None else descendants:
        try:
            proc.send_signal(sig)
        except GONE:
            pass


def signal_group(pgid: int, sig: int, root: psutil.Process | None) -> None:
    """Signal the process group ``pgid``, unless it is ours, or its leader ``root`` is gone (the
    pid may have been reused since)."""
    if pgid <= 1 or pgid == os.getpgrp():
        return  # never our own group
    if root is not None and not root.is_running():
        return  # the leader's pid may have been reused: leave the group alone
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int | None) -> str:
    """How a process ended, from its return code: ``exit code 3``, ``signal 9 (SIGKILL)``."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
