"""The shell script a provider runs for one block: parsl's ``worker_init`` then the command."""

from __future__ import annotations

import shlex


def block_script(command: str, tasks_per_node: int = 1, worker_init: str = "") -> str:
    """``worker_init`` (if any), then ``command``, run ``tasks_per_node`` times side by side
    (parsl's meaning of tasks_per_node) and waited for."""
    if tasks_per_node > 1:
        command = f"for i in $(seq {tasks_per_node}); do /bin/sh -c {shlex.quote(command)} & done; wait"
    return f"{worker_init}\n{command}" if worker_init else command
