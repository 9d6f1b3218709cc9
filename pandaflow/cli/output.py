"""How commands print: a human table, or with ``--json`` the JSON the REST API returns."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from pandaflow.cli.root import settings


def with_json(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command its own ``--json`` too, so it may follow the command name."""

    @click.option(
        "--json", "as_json", is_flag=True, help="Print the JSON the REST API returns instead of tables."
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        if as_json:
            settings().as_json = True
        return fn(*args, **kwargs)

    return wrapper


def emit(data: Any, human: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else as ``human(data)``."""
    if settings().as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(human(data))


def _footer(page: dict[str, Any], key: str) -> str:
    shown, offset, total = len(page[key]), page["offset"], page["total"]
    if not shown:
        return f"no {key} match" if not offset else f"no {key} past offset {offset} (there are {total})"
    text = f"{key} {offset + 1}-{offset + shown} of {total}"
    if offset + shown < total:
        text += f"; next page: --offset {offset + shown}"
    return text


def listing(page: dict[str, Any], key: str, text: str) -> str:
    """A page's table ``text`` with a footer saying which of how many items ``page[key]`` holds."""
    return f"{text}\n{_footer(page, key)}" if page[key] else _footer(page, key)
