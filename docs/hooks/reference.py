"""MkDocs hook of the pandaflow site (mkdocs.yml ``hooks:``).

- ``<!-- reference: NAME -->`` lines are replaced by the reference generated from the code
  (:mod:`pandaflow.reference`: the REST API, configuration keys, error codes);
- links from pages to repository files outside ``docs/`` (``../pandaflow/harvester/follow.py``,
  which work on GitHub) point at the file on ``repo_url``, or become code spans without one;
- the OpenAPI document the server serves is published beside the REST reference
  (``reference/openapi.json``), so the site needs no server and no CDN to offer it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

from pandaflow import reference
from pandaflow.reference.links import repository_links

OPENAPI_FILE = "reference/openapi.json"


def on_files(files: Files, config: Any) -> Files:
    from pandaflow.server.front.openapi import document

    text = json.dumps(document(), indent=2) + "\n"
    files.append(File.generated(config, OPENAPI_FILE, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    docs_dir = Path(config["docs_dir"])
    source = docs_dir / page.file.src_path
    markdown = reference.expand(markdown, page.file.src_path)
    branch = config["extra"].get("repository_branch", "main")
    return repository_links(markdown, source, docs_dir, docs_dir.parent, config["repo_url"], branch)
