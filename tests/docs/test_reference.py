"""The generated reference covers the code, and the hand-written key tables list what the code accepts.

The generators (:mod:`pandaflow.reference`) are tested directly; building the whole site is
``scripts/docs.sh`` (``mkdocs build --strict``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import msgspec
import pytest
import yaml
from mkdocs_click._docs import make_command_docs

from pandaflow import dagfile, errorcodes, providers, reference, spec
from pandaflow.cli import main
from pandaflow.reference import errors, keys, rest
from pandaflow.reference.links import repository_links
from pandaflow.reference.markdown import anchor, cell, roles, schema_type
from pandaflow.server.app import ServerConfig
from pandaflow.server.front.openapi import document
from pandaflow.server.jobs import queues

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def sections(markdown: str, level: int) -> dict[str, str]:
    """Heading text (attributes removed) -> the text up to the next heading of that level or above."""
    found: dict[str, str] = {}
    parts = re.split(rf"^({'#' * level} .*)$", markdown, flags=re.MULTILINE)
    for head, body in zip(parts[1::2], parts[2::2], strict=True):
        found[re.sub(r"\s*\{[^}]*\}\s*$", "", head[level + 1 :]).strip()] = re.split(
            rf"^#{{1,{level}}} ", body, flags=re.MULTILINE
        )[0]
    return found


def heading_ids(markdown: str) -> set[str]:
    return set(re.findall(r"^#+ .*\{\s*#([\w-]+)[^}]*\}\s*$", markdown, flags=re.MULTILINE))


def local_links(markdown: str) -> set[str]:
    return set(re.findall(r"\]\(#([\w-]+)\)", markdown))


# ---------------------------------------------------------------- the command line


def _click_options() -> dict[str, str]:
    text = (DOCS / "reference" / "cli.md").read_text()
    block = re.search(r"^::: mkdocs-click\n((?:    .*\n)+)", text, flags=re.MULTILINE)
    assert block, "docs/reference/cli.md has no mkdocs-click block"
    return dict(re.findall(r"^\s+:(\w+): (.*)$", block.group(1), flags=re.MULTILINE))


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
    return found


def test_cli_reference_covers_every_command_and_option() -> None:
    options = _click_options()
    assert options["module"] == "pandaflow.cli" and options["command"] == "main"
    markdown = "\n".join(
        make_command_docs(
            prog_name=options["prog_name"], command=main, depth=int(options.get("depth", 0)),
            style=options.get("style", "plain"), list_subcommands=options.get("list_subcommands") == "true",
            has_attr_list=True,
        )
    )  # fmt: skip
    documented = sections(markdown, int(options.get("depth", 0)) + 2)  # depth 1: ## pandaflow, ### commands
    commands = _commands(main)
    assert {"submit", "server", "pilot", "report", "run"} <= {path[-1] for path, _ in commands}
    for path, command in commands:
        title = " ".join(("pandaflow", *path))
        assert title in documented, f"`{title}` is not in the CLI reference"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for name in param.opts:
                    assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", documented[title]), (
                        f"`{title}` does not show {name}"
                    )


# ---------------------------------------------------------------- the REST API


def test_rest_reference_is_made_from_the_served_document(api) -> None:
    served = api.get("/api/v1/openapi.json")
    assert served.status_code == 200
    assert served.get_json() == document()
    assert rest.render(served.get_json()) == rest.render()


def test_rest_reference_covers_every_route_parameter_and_response() -> None:
    doc = document()
    markdown = rest.render(doc)
    ids = heading_ids(markdown)
    by_id = {anchor_id: body for anchor_id, body in _sections_by_id(markdown, 3).items()}
    operations = rest.operations(doc)
    assert len(operations) == sum(len(ops) for ops in doc["paths"].values()) > 20
    for method, path, op in operations:
        ident = rest.operation_anchor(method, path)
        assert ident in ids, f"{method.upper()} {path} has no section"
        body = by_id[ident]
        assert body.startswith(f"### {method.upper()} {path} ")
        assert op["summary"] in body
        for param in op.get("parameters", []):
            assert f"| `{param['name']}` | {param['in']} |" in body, f"{method} {path}: {param['name']}"
        for status in op["responses"]:
            assert f"| `{status}` |" in body, f"{method} {path}: response {status}"
        if "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            assert "**Request body** (" in body and rest.link(schema) in body


def test_rest_reference_covers_every_schema_and_field() -> None:
    doc = document()
    markdown = rest.render(doc)
    ids = heading_ids(markdown)
    by_id = _sections_by_id(markdown, 3)
    for name, schema in doc["components"]["schemas"].items():
        ident = rest.schema_anchor(name)
        assert ident in ids, f"schema {name} has no section"
        for field in schema.get("properties", {}):
            assert f"| `{field}` |" in by_id[ident], f"schema {name}: field {field}"
    assert local_links(markdown) <= ids, f"links to nothing: {sorted(local_links(markdown) - ids)}"


def _sections_by_id(markdown: str, level: int) -> dict[str, str]:
    found = {}
    for chunk in re.split(rf"^(?={'#' * level} )", markdown, flags=re.MULTILINE):
        match = re.match(rf"{'#' * level} .*\{{#([\w-]+)\}}", chunk)
        if match:
            found[match.group(1)] = re.split(rf"^#{{1,{level - 1}}} ", chunk, flags=re.MULTILINE)[0]
    return found


def test_rest_reference_states_what_a_type_cannot() -> None:
    markdown = rest.render()
    job = _sections_by_id(markdown, 3)[rest.schema_anchor("Job")]
    assert "one of these must hold" in job and "`buffer` is given" in job and "`command` is given" in job
    submit = _sections_by_id(markdown, 3)[rest.schema_anchor("SubmitRequest")]
    assert "no `site`" in submit and "no `sites`" in submit and "Any other field is refused." in submit


# ---------------------------------------------------------------- error codes


def test_errorcodes_reference_lists_every_code() -> None:
    markdown = errors.render()
    rows = re.findall(r"^\| `(\d+)` \| `(\w+)` \| (yes|no) \| (.*) \|$", markdown, flags=re.MULTILINE)
    assert [(int(code), name, retried == "yes", about) for code, name, retried, about in rows] == [
        (int(c), c.name, c.retryable, c.description) for c in errorcodes.ErrorCode
    ]
    assert markdown.startswith("Numbering: 0 is success")


# ---------------------------------------------------------------- configuration keys


def _table(anchor_id: str) -> keys.KeyTable:
    found = {t.anchor: t for ts in keys.tables().values() for t in ts}
    return found[anchor_id]


MODELS = {
    "dag-top": list(dagfile.TOP_KEYS),
    "dag-task": list(dagfile.TASK_KEYS),
    "dag-job": list(dagfile.JOB_KEYS),
    "dag-cluster": list(dagfile.CLUSTER_KEYS),
    "rest-job": [f.encode_name for f in msgspec.structs.fields(spec.Job)],
    "rest-submit": [f.encode_name for f in msgspec.structs.fields(spec.SubmitRequest)],
    "rest-append": [f.encode_name for f in msgspec.structs.fields(spec.AppendRequest)],
    "resource-specification": list(spec.RESOURCE_KEYS),
    "queue-brokerage": [f.name for f in dataclasses.fields(queues.Queue) if f.name != "extra"],
    "queue-harvester": list(queues.HARVESTER_KEYS),
    "queue-providers": providers.known(),
    "server-config": [f.name for f in dataclasses.fields(ServerConfig)],
}


@pytest.mark.parametrize("anchor_id", sorted(MODELS))
def test_configuration_reference_lists_exactly_the_model_keys(anchor_id: str) -> None:
    table = _table(anchor_id)
    assert sorted(table.names) == sorted(MODELS[anchor_id])
    assert len(set(table.names)) == len(table.names)
    assert all(key.meaning and key.type for key in table.keys), [k.name for k in table.keys if not k.meaning]
    markdown = keys.render()
    for name in table.names:
        assert f"| `{name}` |" in _sections_by_id(markdown, 3)[anchor_id]


def test_queue_brokerage_keys_are_the_ones_the_loader_accepts() -> None:
    assert sorted(MODELS["queue-brokerage"]) == sorted(queues._FIELDS)


def test_configuration_types_and_defaults_come_from_the_code() -> None:
    job = {k.name: k for k in _table("dag-job").keys}
    assert job["cores"].type == "integer (1–2³¹−1)"
    assert job["memory_multiplier"].type == "number (1–100)"
    assert job["walltime_s"].type == "number (> 0)"
    assert job["label"].meaning == "an alias of `task`"
    assert "merged with the task's" in job["env"].meaning
    submit = {k.name: k for k in _table("rest-submit").keys}
    assert submit["name"].default == "required" and submit["owner"].default == '`""`'
    assert submit["sites"].default == "not set"
    brokerage = {k.name: k for k in _table("queue-brokerage").keys}
    assert brokerage["name"].default == "required"
    assert brokerage["site"].default == '`"local"`'
    assert brokerage["cores"].type == "integer ≥ 1"
    assert brokerage["memory_multiplier"].type == "number 1–100"
    assert brokerage["mode"].type == '`"pull"` or `"push"`'
    harvester = {k.name: k for k in _table("queue-harvester").keys}
    assert harvester["max_queued_workers"].default == "the queue's `max_workers`"
    assert harvester["worker_memory_mb"].default == "the queue's `max_memory_mb`"
    assert harvester["max_new_workers"].type == "integer ≥ 1"
    server = {k.name: k for k in _table("server-config").keys}
    assert server["port"].default == "`8800`"
    assert server["db_url"].default.startswith("`pandaflow.config.default_db_url()`")
    resources = {k.name: k for k in _table("resource-specification").keys}
    assert resources["running_time_min"].meaning.endswith("sets `walltime_s` (× 60)")


def test_configuration_links_resolve() -> None:
    markdown = keys.render()
    assert local_links(markdown) <= heading_ids(markdown)
    rest_ids = heading_ids(rest.render())
    for target in re.findall(r"\]\(rest\.md#([\w-]+)\)", markdown):
        assert target in rest_ids


def test_a_key_without_a_description_is_an_error() -> None:
    with pytest.raises(KeyError, match=r"queue key 'nope' is not described: add ``nope`` to the key list"):
        keys._meaning({}, "nope", "queue")

    @dataclasses.dataclass
    class Undocumented:
        port: int = 1

    with pytest.raises(KeyError, match=r"Undocumented.port has no docstring: write one under the field"):
        keys.dataclass_keys(Undocumented)


# ---------------------------------------------------------------- hand-written tables in the guides


def guide_table_keys(page: Path, heading: str) -> list[str]:
    """The names in the first column of the first table under ``heading`` (every code span of the
    cell: ```task` (or its alias `label`)`` is two keys)."""
    text = page.read_text()
    at = re.search(rf"^#+ {re.escape(heading)}\s*$", text, flags=re.MULTILINE)
    assert at, f"{page.name} has no heading {heading!r}"
    lines = text[at.end() :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


GUIDES = [
    ("queues.md", "Brokerage keys", "queue-brokerage"),
    ("queues.md", "Harvester keys", "queue-harvester"),
    ("dag.md", "Top level", "dag-top"),
    ("dag.md", "Task object (`tasks.<label>`)", "dag-task"),
    ("dag.md", "Job object (`jobs[i]`)", "dag-job"),
    ("dag.md", "Clusters (`clusters.<label>`): several short jobs as one payload", "dag-cluster"),
]


@pytest.mark.parametrize(("page", "heading", "model"), GUIDES, ids=[f"{p}:{m}" for p, _, m in GUIDES])
def test_guide_tables_list_exactly_the_model_keys(page: str, heading: str, model: str) -> None:
    names = guide_table_keys(DOCS / page, heading)
    assert len(names) == len(set(names)), f"{page} {heading!r} lists a key twice: {names}"
    missing, extra = set(MODELS[model]) - set(names), set(names) - set(MODELS[model])
    assert not missing and not extra, (
        f"docs/{page}, table under {heading!r}: keys the code accepts but the table leaves out: "
        f"{sorted(missing)}; keys the table lists but the code does not accept: {sorted(extra)}"
    )


def test_guide_table_parser_reads_aliases_and_shared_rows(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("## Keys\n\n| key | what |\n|---|---|\n| `a` (or its alias `b`) | x `not-a-key` |\n"
                    "| `c`, `d` | y |\n\nafter\n| `e` | not in the table |\n")  # fmt: skip
    assert guide_table_keys(page, "Keys") == ["a", "b", "c", "d"]


# ---------------------------------------------------------------- pages, markers, links


def test_every_generated_section_is_asked_for_by_a_page_and_every_marker_is_known() -> None:
    asked = {}
    for page in DOCS.rglob("*.md"):
        for name in reference.markers(page.read_text()):
            asked[name] = page
    assert set(asked) == set(reference.GENERATORS)


def test_an_unknown_marker_says_which_page_and_what_exists() -> None:
    with pytest.raises(reference.UnknownReference) as refused:
        reference.expand("# X\n\n<!-- reference: rst -->\n", "reference/x.md")
    message = str(refused.value)
    assert message.startswith("reference/x.md: no generated reference named 'rst'")
    assert "<!-- reference: rest -->" in message


def test_expand_replaces_markers_only_on_lines_of_their_own() -> None:
    page = "intro\n\n<!-- reference: errorcodes -->\n\n`<!-- reference: nope -->` in text\n"
    expanded = reference.expand(page)
    assert "| `1101` | `OUT_OF_MEMORY` | yes |" in expanded
    assert "`<!-- reference: nope -->` in text" in expanded


def _nav_files(nav: list) -> list[str]:
    found = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        found += _nav_files(value) if isinstance(value, list) else [value]
    return found


def test_the_nav_lists_every_page_once() -> None:
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!ENV", lambda loader, node: None)
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=loader)
    nav = _nav_files(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav))


def test_repository_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("")
    (tmp_path / "docs" / "other.md").write_text("")
    page = tmp_path / "docs" / "page.md"
    text = (
        "[`mod.py`](../pkg/mod.py) and [the package](../pkg) and [other](other.md#x) and "
        "[gone](../pkg/gone.py) and [web](https://example.org/a.py) and [up](#top)\n"
        "```text\n[`mod.py`](../pkg/mod.py)\n```\n"
    )
    linked = repository_links(text, page, tmp_path / "docs", tmp_path, "https://git.example.org/p/")
    assert linked.splitlines()[0] == (
        "[`mod.py`](https://git.example.org/p/blob/main/pkg/mod.py) and "
        "[the package](https://git.example.org/p/tree/main/pkg) and [other](other.md#x) and "
        "[gone](../pkg/gone.py) and [web](https://example.org/a.py) and [up](#top)"
    )
    assert linked.splitlines()[2] == "[`mod.py`](../pkg/mod.py)"  # fenced blocks are left as written
    spans = repository_links(text, page, tmp_path / "docs", tmp_path, None, "dev")
    assert spans.splitlines()[0].startswith("`pkg/mod.py` and `pkg` and [other](other.md#x)")


def test_repository_links_of_the_guides_point_at_files_that_exist() -> None:
    page = DOCS / "harvester.md"
    text = page.read_text()
    linked = repository_links(text, page, DOCS, REPO, "https://git.example.org/pandaflow", "main")
    targets = re.findall(r"\]\(https://git\.example\.org/pandaflow/blob/main/([^)#]+)", linked)
    assert "pandaflow/harvester/follow.py" in targets
    assert all((REPO / target).is_file() for target in targets)
    assert "](../" not in linked


# ---------------------------------------------------------------- Markdown


def test_schema_types_read_as_words() -> None:
    def link(name: str) -> str:
        return f"[{name}]"

    integer = {"type": "integer", "minimum": 1, "maximum": spec.INT_MAX}
    assert schema_type(integer, link) == "integer (1–2³¹−1)"
    assert schema_type({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]}, link) == (
        "number (> 0) or null"
    )
    jobs = {"type": "array", "items": {"$ref": "#/components/schemas/Job"}, "minItems": 1}
    assert schema_type(jobs, link) == "list of [Job] (at least 1 item)"
    assert schema_type({"type": "object", "additionalProperties": {"type": "string"}}, link) == (
        "mapping string → string"
    )
    assert schema_type({"enum": ["pull", "push"]}, link) == '`"pull"` or `"push"`'
    assert schema_type({"type": "string", "format": "date-time"}, link) == "string (ISO-8601 time)"


def test_rest_markup_becomes_markdown() -> None:
    assert roles("see :class:`~pandaflow.spec.Job` and :func:`pandaflow.spec.job_from`") == (
        "see `Job` and `pandaflow.spec.job_from`"
    )
    assert roles("A file looks like::\n\n    {}\n") == "A file looks like:\n\n    {}\n"
    assert cell("a | b `x|y`") == "a \\| b `x|y`"
    assert anchor("get", "/jobs/{job_id}") == "get-jobs-job-id"
