"""Every fenced block of README.md, docs/ and examples/ as a test: one test per page, since the
blocks of a page build on each other (a server started in one block is used by the next). The
convention each page follows is docs/contributing.md; the blocks are found by sybil."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import docblocks

PAGES = docblocks.pages()


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(docblocks.REPO)) for p in PAGES])
def test_page(path: Path) -> None:
    docblocks.run_page(path)


def test_every_page_is_found() -> None:
    names = {str(p.relative_to(docblocks.REPO)) for p in PAGES}
    assert {"README.md", "docs/dag.md", "docs/jobs.md", "docs/bps.md"} <= names
