"""Where pandaflow keeps its state on this machine, and how clients find a server."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def home() -> Path:
    """``$PANDAFLOW_HOME`` or ``~/.pandaflow``: default database, token and server address."""
    return Path(os.environ.get("PANDAFLOW_HOME") or Path.home() / ".pandaflow")


def default_db_url() -> str:
    """``sqlite:///$PANDAFLOW_HOME/pandaflow.db``: a SQLite file under :func:`home`."""
    return f"sqlite:///{home() / 'pandaflow.db'}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def load_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """The token given directly, else the file given, else ``$PANDAFLOW_TOKEN``, else ``home()/token``.

    An explicit file wins over the environment: a pilot launched with ``--token-file`` must
    use the token of the server that launched it, whatever its shell exports.
    """
    if token:
        return token
    if token_file:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError:
            return None
    if os.environ.get("PANDAFLOW_TOKEN"):
        return os.environ["PANDAFLOW_TOKEN"]
    try:
        return (home() / "token").read_text().strip() or None
    except OSError:
        return None


def server_info(where: Path | None = None) -> dict | None:
    """What the last server started on this machine wrote in ``server.json`` under ``where``
    (default :func:`home`): its ``url``, ``zmq`` endpoint, ``db`` and ``pid``."""
    try:
        return json.loads(((where or home()) / "server.json").read_text())
    except (OSError, ValueError):
        return None


def server_url(given: str | None = None) -> str | None:
    """The server a client talks to: the URL ``given`` (``--server``, ``$PANDAFLOW_SERVER``), else
    the one :func:`server_info` names, else None."""
    return given or (server_info() or {}).get("url")
