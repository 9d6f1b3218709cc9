"""The functions a Globus Compute endpoint runs for pandaflow: a pilot, and the request to stop one.

Both are sent as source text (the SDK's ``PureSourceTextInspect`` strategy) and executed on the
endpoint with nothing but the standard library: every import is inside the function, neither
refers to anything else in this module, and their annotations are builtins (the source runs as
it is, without this module's imports). The pilot command itself runs the Python that
has pandaflow installed (the harvester's ``--python``); the endpoint's own Python need not.

Files under ``state_dir`` (on the endpoint's file system; shared between nodes on an HPC
system) tie the two together: ``<key>.log`` is the pilot's output, ``<key>.pid`` says where it
runs, and ``<key>.stop`` asks it to stop.
"""


def run_pilot(
    command: str,
    key: str,
    state_dir: str,
    walltime_s: float | None = None,
    grace_s: float = 120.0,
    poll_s: float = 5.0,
    tail_lines: int = 40,
    env: dict | None = None,
) -> dict:
    """Run ``command`` (a pilot) with ``/bin/sh`` until it exits; SIGTERM it (then SIGKILL after
    ``grace_s``) when ``<state_dir>/<key>.stop`` appears or ``walltime_s`` passes. Returns its exit
    code, the end of its output and why it was stopped, if it was."""
    import collections
    import os
    import signal
    import socket
    import subprocess
    import time

    state = os.path.expanduser(os.path.expandvars(state_dir))
    os.makedirs(state, exist_ok=True)
    log_path = os.path.join(state, f"{key}.log")
    stop_path = os.path.join(state, f"{key}.stop")
    pid_path = os.path.join(state, f"{key}.pid")
    started = time.time()
    if os.path.exists(stop_path):  # cancelled while the task waited for the endpoint
        os.remove(stop_path)
        return {
            "key": key,
            "exit_code": None,
            "stopped": "asked to stop before it started",
            "host": socket.gethostname(),
            "duration_s": 0.0,
            "log_path": log_path,
            "log_tail": "",
        }
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: a stop reaches the pilot, not the worker
        )
    with open(pid_path, "w") as f:
        f.write(f"{socket.gethostname()} {proc.pid}\n")
    stopped, signalled = None, None
    while True:
        try:
            code = proc.wait(timeout=poll_s)
            break
        except subprocess.TimeoutExpired:
            pass
        if signalled is None:
            if os.path.exists(stop_path):
                stopped = "asked to stop"
            elif walltime_s and time.time() - started > walltime_s:
                stopped = "walltime"
            if stopped:
                signalled = time.time()
                os.killpg(proc.pid, signal.SIGTERM)  # the pilot drains: reports its jobs, exits
        elif time.time() - signalled > grace_s:
            os.killpg(proc.pid, signal.SIGKILL)
    # A shell that does not exec its last command (dash) dies of the SIGTERM at once while the
    # pilot drains: the stop is over when the whole process group is gone, within the grace.
    while signalled is not None:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        if time.time() - signalled > grace_s:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(min(poll_s, 0.5))
    for path in (pid_path, stop_path):
        try:
            os.remove(path)
        except OSError:
            pass
    with open(log_path, "rb") as log:
        tail = collections.deque(log, maxlen=tail_lines)
    return {
        "key": key,
        "exit_code": code,
        "stopped": stopped,
        "host": socket.gethostname(),
        "duration_s": round(time.time() - started, 3),
        "log_path": log_path,
        "log_tail": b"".join(tail).decode(errors="replace"),
    }


def stop_pilot(key: str, state_dir: str) -> dict:
    """Ask the pilot ``key`` to stop: a running one is sent SIGTERM within its ``poll_s``, one not
    started yet never starts. Says whether it was running."""
    import os
    import socket

    state = os.path.expanduser(os.path.expandvars(state_dir))
    os.makedirs(state, exist_ok=True)
    running = os.path.exists(os.path.join(state, f"{key}.pid"))
    with open(os.path.join(state, f"{key}.stop"), "w") as f:
        f.write(f"stop requested on {socket.gethostname()}\n")
    return {"key": key, "running": running}
