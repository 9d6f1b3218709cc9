"""The ``pandaflow`` command group: its global options, and the settings they give every command."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import click


def setup_logging(verbose: bool) -> None:
    """Log to stderr (DEBUG with ``-v``): the long-running commands' logging."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # schema migrations say what they do only when asked (-v)
        logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclass
class Settings:
    """Where the read and control commands get their data (from the group's options)."""

    server_url: str | None
    token: str | None
    db_url: str | None
    as_json: bool


@click.group()
@click.version_option(package_name="pandaflow")
@click.option(
    "--server",
    "server_url",
    default=None,
    envvar="PANDAFLOW_SERVER",
    show_envvar=True,
    help="Server REST URL (default: the server last started on this machine).",
)
@click.option(
    "--token", default=None, help="Server token (default: $PANDAFLOW_TOKEN or $PANDAFLOW_HOME/token)."
)
@click.option(
    "--db",
    "db_url",
    default=None,
    help="Read this database directly (URL or SQLite file) instead of asking a server.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON the REST API returns instead of tables."
)
@click.pass_context
def main(
    ctx: click.Context, server_url: str | None, token: str | None, db_url: str | None, as_json: bool
) -> None:
    """pandaflow: job server, pilots and parsl executor."""
    ctx.obj = Settings(server_url, token, db_url, as_json)


def settings() -> Settings:
    """The settings of the command being run (the root group's options; ``--json`` may be set later)."""
    return click.get_current_context().find_root().obj
