"""Waiting for something to become true, without sleeping longer than needed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "the condition",
               interval: float = 0.05) -> Any:  # fmt: skip
    """Poll ``predicate`` until it returns something truthy, which is returned; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def connected(executor: Any) -> Any:
    """Wait until a PandaExecutor's reply socket has heard the server (its first pong).

    Known product issue: submissions leave on a socket of their own while replies come back on
    the main one; a submission acknowledged before the server knows the main socket loses its
    acknowledgement and waits 10 s for a resend. Harmless, but it would slow the tests down."""
    wait_until(lambda: executor._epoch is not None, timeout=60, what="the executor to reach the server")
    return executor
