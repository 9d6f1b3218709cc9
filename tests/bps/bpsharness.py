"""Helpers for the tests that run the real ``bps`` command against a local pandaflow server:
the command itself, its report table read back, and stopping the local server and pilot that
``bps submit`` started in the background."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from pfharness import gone

# The console script installed beside this Python (the venv's), not whichever bps is on PATH.
BPS = str(Path(sys.executable).parent / "bps")


def bps_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell that uses ``home`` as PANDAFLOW_HOME and has no server configured."""
    env = {k: v for k, v in os.environ.items() if k not in ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN")}
    env.update(PANDAFLOW_HOME=str(home), BPS_WMS_SERVICE_CLASS="pandaflow.bps.PandaflowService", **extra)
    # bps itself runs pipetask (update-graph-run) at submission: the venv's bin must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return env


def bps(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``bps ARGS`` and return its completed process (text output)."""
    return subprocess.run([BPS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def report_table(stdout: str) -> dict[str, dict[str, int]]:
    """The per-label table of ``bps report --id ID``: ``{label: {column: count}}`` (TOTAL included)."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[-1:] == ["EXPECTED"])
    columns = lines[header].split()
    table = {}
    for line in lines[header + 1 :]:
        cells = line.split()
        if len(cells) == len(columns) + 1 and all(c.isdigit() for c in cells[1:]):
            table[cells[0]] = dict(zip(columns, map(int, cells[1:]), strict=True))
    return table


def stop_local(home: Path, pilot_only: bool = False) -> None:
    """Stop the local server and pilot whose pids ``home/bps-local.json`` records (their process groups:
    they were started with ``start_new_session``, so payloads still running go too)."""
    try:
        state = json.loads((home / "bps-local.json").read_text())
    except (OSError, ValueError):
        return
    procs = []
    for key in ("pilot_pid",) if pilot_only else ("pilot_pid", "server_pid"):
        pid = state.get(key)
        if pid and psutil.pid_exists(pid):
            try:
                procs.append(psutil.Process(pid))
                os.killpg(pid, signal.SIGTERM)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
    for proc in gone(procs, timeout=10):
        proc.kill()
