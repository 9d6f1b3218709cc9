"""Links from documentation pages to repository files outside the documentation directory.

On GitHub, ``[follow.py](../pandaflow/harvester/follow.py)`` in ``docs/harvester.md`` opens the
file; in the built site there is no such file. :func:`repository_links` rewrites those links, and
only those, to the file on the repository (``repo_url``), or, when the site has no ``repo_url``,
to the path as a code span. Links into the documentation, to anchors and to other sites are left
alone; a link to a repository file that does not exist is left alone too, so that the site build
reports it as broken.
"""

from __future__ import annotations

import re
from pathlib import Path

LINK = re.compile(r"(?<!!)\[(?P<text>(?:[^\[\]]|\[[^\]]*\])*)\]\((?P<target>[^()\s]+)\)")
FENCE = re.compile(r"^\s*(?P<marker>`{3,}|~{3,})(?P<info>.*)$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#|/)", re.IGNORECASE)


def repository_links(
    markdown: str, page: Path, docs_dir: Path, repo_root: Path, repo_url: str | None, branch: str = "main"
) -> str:
    """``markdown`` of the page at ``page`` with its links to repository files outside ``docs_dir``
    pointing at ``repo_url`` (``.../blob/BRANCH/path``, ``.../tree/BRANCH/dir``), or turned into code
    spans of the repository path when ``repo_url`` is None. Fenced code blocks are left as written."""
    docs_dir, repo_root = docs_dir.resolve(), repo_root.resolve()
    out, fenced = [], None
    for line in markdown.splitlines(keepends=True):
        fence = FENCE.match(line)
        if fence and fenced is None:
            fenced = fence.group("marker")
            out.append(line)
            continue
        if fence and _closes(fence, fenced):
            fenced = None
            out.append(line)
            continue
        if fenced is not None:
            out.append(line)
            continue
        out.append(LINK.sub(lambda m: _rewrite(m, page, docs_dir, repo_root, repo_url, branch), line))
    return "".join(out)


def _closes(fence: re.Match[str], opened: str | None) -> bool:
    """A fence closes the block it is in: the same character, at least as long, no info string."""
    marker = fence.group("marker")
    return (
        opened is not None
        and marker[0] == opened[0]
        and len(marker) >= len(opened)
        and not fence.group("info").strip()
    )


def _rewrite(
    match: re.Match[str], page: Path, docs_dir: Path, repo_root: Path, repo_url: str | None, branch: str
) -> str:
    target = match.group("target")
    if EXTERNAL.match(target):
        return match.group(0)
    path, _, fragment = target.partition("#")
    where = (page.resolve().parent / path).resolve()
    if where.is_relative_to(docs_dir) or not where.is_relative_to(repo_root) or not where.exists():
        return match.group(0)
    relative = where.relative_to(repo_root).as_posix()
    if repo_url is None:
        return f"`{relative}`"
    kind = "tree" if where.is_dir() else "blob"
    anchor = f"#{fragment}" if fragment else ""
    return f"[{match.group('text')}]({repo_url.rstrip('/')}/{kind}/{branch}/{relative}{anchor})"
