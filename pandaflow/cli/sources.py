"""Where the read and control commands get their data: a running server (``--server``, over
REST), or a database read directly (``--db``) with the same queries the server uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from pandaflow import config as pf_config
from pandaflow.cli.root import settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pandaflow.client import Client


def open_database(url: str) -> Engine:
    """An engine on an existing pandaflow database (never creates or migrates one)."""
    from pathlib import Path

    from sqlalchemy.exc import SQLAlchemyError

    from pandaflow.server.store.db import DatabaseError, is_current, make_engine, sqlite_url

    if "://" not in url:
        url = sqlite_url(url)  # a bare path names a SQLite file
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.split("///", 1)[1])
        if not path.is_file():
            # Connecting would silently create an empty file.
            raise click.ClickException(f"no database file {path}: check --db")
    try:
        engine = make_engine(url)
        current = is_current(engine)
    except (DatabaseError, SQLAlchemyError) as exc:
        raise click.ClickException(f"cannot open database {url}: {exc}") from None
    if not current:
        engine.dispose()
        raise click.ClickException(
            f"{url} does not hold a current pandaflow schema: start `pandaflow server --db {url}` once "
            "to create or upgrade it"
        )
    return engine


def client() -> Client:
    """A client of the server the options (or ``server.json``) name, with the token they give."""
    from pandaflow.client import Client

    st = settings()
    url = pf_config.server_url(st.server_url)
    if not url:
        raise click.ClickException(
            "no server known: pass --server URL or set PANDAFLOW_SERVER, start one with `pandaflow server`, "
            "or read a database directly with --db URL"
        )
    token = pf_config.load_token(st.token)
    if not token:
        raise click.ClickException(
            "no token: pass --token, set PANDAFLOW_TOKEN, or run where `pandaflow server` wrote "
            f"{pf_config.home() / 'token'}"
        )
    return Client(url, token)


def remote(call: Callable[[Client], Any]) -> Any:
    """``call(client())``; a failed request is a usage error with the server's message."""
    from pandaflow.client import ClientError

    try:
        return call(client())
    except ClientError as exc:
        problems = "".join(f"\n  {p}" for p in exc.problems)
        raise click.ClickException(f"{exc}{problems}") from None


def read(query: str, /, **kwargs: Any) -> Any:
    """``queries.<query>`` on the ``--db`` database, else the same-named client call to the server."""
    db_url = settings().db_url
    if not db_url:
        return remote(lambda client: getattr(client, query)(**kwargs))
    return read_database(db_url, query, **kwargs)


def read_database(db_url: str, query: str, /, **kwargs: Any) -> Any:
    """``queries.<query>`` on the database ``db_url``; a refusal is a usage error."""
    from pandaflow.server.front import queries

    engine = open_database(db_url)
    try:
        with engine.connect() as conn:
            return getattr(queries, query)(conn, **kwargs)
    except (queries.NotFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
