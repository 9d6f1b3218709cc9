"""Reference pages generated from the code, so they cannot drift from it.

A documentation page asks for a generated section with a marker line,
``<!-- reference: NAME -->``; :func:`expand` (called by the site's build hook,
``docs/hooks/reference.py``) replaces each marker with :func:`render` of that name:

* ``rest``: every route and schema of the OpenAPI document the server serves (:mod:`.rest`);
* ``configuration``: the keys of DAG files, REST jobs, ``resource_specification``, queue
  descriptions and ``ServerConfig``, from their typed models (:mod:`.keys`);
* ``errorcodes``: the ``ErrorCode`` table (:mod:`.errors`).

The CLI reference comes from click itself (mkdocs-click) and the Python API from docstrings
(mkdocstrings); neither needs a generator here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pandaflow.reference import errors, keys, rest

GENERATORS: dict[str, Callable[[], str]] = {
    "rest": rest.render,
    "configuration": keys.render,
    "errorcodes": errors.render,
}
MARKER = re.compile(r"^<!--\s*reference:\s*(?P<name>[^\s>]*)\s*-->[ \t]*$", re.MULTILINE)


class UnknownReference(ValueError):
    """A page asks for a generated section that does not exist."""


def render(name: str) -> str:
    """The Markdown of one generated section."""
    if name not in GENERATORS:
        raise UnknownReference(
            f"no generated reference named {name!r}; write one of "
            + ", ".join(f"<!-- reference: {known} -->" for known in GENERATORS)
        )
    return GENERATORS[name]()


def markers(markdown: str) -> list[str]:
    """The names of the generated sections a page asks for, in order."""
    return [match.group("name") for match in MARKER.finditer(markdown)]


def expand(markdown: str, where: str = "<page>") -> str:
    """``markdown`` with every marker replaced by its generated section; an unknown name raises
    :class:`UnknownReference` naming the page."""
    try:
        return MARKER.sub(lambda match: render(match.group("name")), markdown)
    except UnknownReference as exc:
        raise UnknownReference(f"{where}: {exc}") from None
