"""A driver script (a parsl script, a loop) run as a user runs it, to be SIGKILLed mid-run and
run again: its output goes to a log file read line by line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


class ScriptRun:
    """``python SCRIPT ARGS...`` in its own session, in ``where``, its output in ``where/driver-*.log``."""

    def __init__(self, script: Path, where: Path, env: dict[str, str], *args: str):
        self.log = where / f"driver-{time.monotonic_ns()}.log"
        self._f = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            env=env,
            stdout=self._f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=where,
        )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def kill9(self) -> None:
        """Crash it: SIGKILL to the script's process only."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._f.close()
