"""Helpers for the bps tests: generic workflows made runnable anywhere (:func:`runnable`), the
real ``bps`` command and its report table read back, and stopping the local server and pilot
that ``bps submit`` started in the background. Import it after ``pytest.importorskip`` of
``lsst.ctrl.bps``.

The ctrl_bps test workflows (``gw_test_utils``) name ``/usr/bin/uptime`` and ``finalJob.bash``
as executables; :func:`runnable` swaps every job's executable for ``/bin/sh -c`` appending the
job's label to ``<ENV:BPS_TEST_OUT>/order.log`` (the label comes from ``cmdvals``, the
directory from the job's environment), so the run order can be read back afterwards. Nothing
else about the generic workflows changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from lsst.ctrl.bps import GenericWorkflowExec

from support.processes import gone

# The console script installed beside this Python (the venv's), not whichever bps is on PATH.
BPS = str(Path(sys.executable).parent / "bps")

SH = GenericWorkflowExec("sh", "/bin/sh", False)


def runnable(gwf, outdir: Path, fail_labels: dict[str, str] | None = None, sleep: float = 0.0):
    """Give every job of ``gwf`` (and its final job) a harmless shell command (module docstring).

    A label in ``fail_labels`` runs ``test -e PATH`` instead: it fails until that file exists.
    """
    fail_labels = fail_labels or {}
    jobs = [gwf.get_job(name) for name in gwf]
    final = gwf.get_final()
    if final is not None:
        jobs.append(final)
    for job in jobs:
        if not hasattr(job, "executable"):
            continue  # no-op jobs
        job.executable = SH
        nap = f"sleep {sleep}; " if sleep and job.label not in ("pipetaskInit", "finalJob") else ""
        if job.label in fail_labels:
            job.arguments = (
                f"-c 'echo {{label}} >> <ENV:BPS_TEST_OUT>/order.log; test -e {fail_labels[job.label]}'"
            )
        else:
            job.arguments = f"-c '{nap}echo {{label}} >> <ENV:BPS_TEST_OUT>/order.log'"
        job.cmdvals = {"label": job.label}
        job.environment = {"BPS_TEST_OUT": str(outdir)}
        job.number_of_retries = 0
    return gwf


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
