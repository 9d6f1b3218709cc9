"""The configuration reference, generated from the typed models that check each key.

Every table lists exactly the keys its model accepts, with the type, range and default the code
enforces and the description the code gives:

* DAG files (:mod:`pandaflow.dagfile`): the top level, tasks and jobs (the msgspec structs of
  :mod:`pandaflow.spec`, whose ``Meta`` constraints and descriptions they show), clusters;
* REST job fields and submission bodies (:mod:`pandaflow.spec`);
* the executor's ``resource_specification`` (:class:`pandaflow.spec.ResourceSpecification`);
* queue descriptions (:class:`pandaflow.server.jobs.queues.Queue` and ``HARVESTER_KEYS``; their
  descriptions are the key list of that module's docstring);
* :class:`pandaflow.server.app.ServerConfig` (dataclass defaults, attribute docstrings).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import msgspec

from pandaflow import dagfile, spec
from pandaflow.reference.markdown import anchor, code, number, prose, schema_type, table
from pandaflow.server.jobs import queues

REST_PAGE = "rest.md"  # the REST reference, beside this page: schemas link there


@dataclass(frozen=True)
class Key:
    """One row of a key table; every text is Markdown."""

    name: str
    type: str
    default: str
    meaning: str


@dataclass(frozen=True)
class KeyTable:
    """The keys of one model: ``source`` says which code defines them."""

    title: str
    anchor: str
    source: str
    intro: str
    keys: tuple[Key, ...]
    defaults: bool = True  # whether the table has a default column

    @property
    def names(self) -> list[str]:
        return [key.name for key in self.keys]

    def markdown(self, level: int = 3) -> str:
        headers = ["key", "type", "default", "meaning"] if self.defaults else ["key", "type", "meaning"]
        rows = [
            (code(k.name), k.type, k.default, k.meaning)
            if self.defaults
            else (code(k.name), k.type, k.meaning)
            for k in self.keys
        ]
        head = f"{'#' * level} {self.title} {{#{self.anchor}}}"
        return "\n\n".join(
            p for p in (head, f"{self.intro} Defined by {self.source}.", table(headers, rows)) if p
        )


def rest_link(name: str) -> str:
    """A schema of the REST reference."""
    return f"[{name}]({REST_PAGE}#{anchor('schema', name)})"


def _schemas(*structs: type) -> dict[str, dict[str, Any]]:
    _, found = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    return found


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` as ``X`` (a DAG file refuses null: it is a key written without its value)."""
    branches = schema.get("anyOf")
    if not branches:
        return schema
    kept = [b for b in branches if b.get("type") != "null"]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**kept[0], **rest}


def _description(schema: dict[str, Any]) -> str:
    """A field's description, also when it sits on the described branch of ``X | None``."""
    found = schema.get("description") or next(
        (b["description"] for b in schema.get("anyOf", ()) if "description" in b), ""
    )
    return prose(found)


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return "required"
    value = field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
    if value is msgspec.UNSET:
        return "not set"
    return code(json.dumps(value))


def struct_keys(struct: type, link: Any = rest_link, nullable: bool = True) -> list[Key]:
    """The fields of a msgspec struct, typed from its JSON schema (``Meta`` ranges included), with
    the defaults of the struct itself."""
    schema = _schemas(struct)[struct.__name__]
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    keys = []
    for name, prop in schema.get("properties", {}).items():
        shown = prop if nullable else _without_null(prop)
        keys.append(Key(name, schema_type(shown, link), _default(fields[name]), _description(prop)))
    return keys


# ---------------------------------------------------------------- DAG files

#: What the DAG file adds to the job specification: keys the structs of pandaflow.spec do not have.
DAG_ONLY = {
    "tasks": (
        "mapping task label → [task object](#dag-task)",
        "defaults per task (pipeline label); when present, every job's task must be declared in it",
    ),
    "clusters": (
        "mapping cluster label → [cluster](#dag-cluster)",
        "jobs of some tasks that share the values of some `vars` run together as one payload",
    ),
    "label": ("string", "an alias of `task`"),
    "vars": ("mapping identifier → value", "values for the command template (`{visit}` in a command)"),
}
#: How a job's key combines with its task's, where the job's value does not simply win.
JOB_OVER_TASK = {"env": "merged with the task's: the job's variables win"}
CLUSTER_MEANINGS = {
    "tasks": (
        "non-empty list of task labels",
        "the jobs of these tasks are clustered (each task in at most one cluster)",
    ),
    "dimensions": (
        "list of variable names",
        "jobs with equal values of these `vars` form one cluster (none: one cluster of all of them)",
    ),
}


def _dag_key(name: str, from_spec: dict[str, Key]) -> Key:
    if name in from_spec:
        return from_spec[name]
    if name in DAG_ONLY:
        kind, meaning = DAG_ONLY[name]
        return Key(name, kind, "", meaning)
    raise KeyError(f"DAG file key {name!r} has no description: add it to pandaflow.reference.keys.DAG_ONLY")


def dag_tables() -> list[KeyTable]:
    """The keys of a DAG file: top level, task object, job object, cluster."""
    local = {"Job": "[job object](#dag-job)"}

    def link(name: str) -> str:
        return local.get(name) or rest_link(name)

    top = {k.name: k for k in struct_keys(spec.SubmitRequest, link)}
    top["jobs"] = dataclasses.replace(top["jobs"], type="non-empty list of [job objects](#dag-job)")
    task = {k.name: k for k in struct_keys(spec.JobDefaults, link, nullable=False)}
    job = {k.name: k for k in struct_keys(spec.Job, link, nullable=False)}
    for name in dagfile.TASK_KEYS:  # a job's own value wins over its task's
        over = JOB_OVER_TASK.get(name, "the job's value overrides its task's")
        job[name] = dataclasses.replace(task[name], meaning=f"{task[name].meaning} ({over})")
    clusters = [
        Key(name, CLUSTER_MEANINGS[name][0], "", CLUSTER_MEANINGS[name][1]) for name in dagfile.CLUSTER_KEYS
    ]
    return [
        KeyTable(
            "Top level",
            "dag-top",
            code("pandaflow.dagfile.TOP_KEYS") + ", typed by " + code("pandaflow.spec.SubmitRequest"),
            "The keys of the file itself.",
            tuple(_dag_key(n, top) for n in dagfile.TOP_KEYS),
            defaults=False,
        ),
        KeyTable(
            "Task object",
            "dag-task",
            code("pandaflow.spec.JobDefaults") + " (" + code("pandaflow.dagfile.TASK_KEYS") + ")",
            "`tasks.<label>`: defaults for every job of the task; "
            "a key written without a value (YAML null) is refused.",
            tuple(task[n] for n in dagfile.TASK_KEYS),
            defaults=False,
        ),
        KeyTable(
            "Job object",
            "dag-job",
            code("pandaflow.dagfile.JOB_KEYS") + ", typed by " + code("pandaflow.spec.Job"),
            "`jobs[i]`: one job; `name` is required in a DAG file.",
            tuple(_dag_key(n, job) for n in dagfile.JOB_KEYS),
            defaults=False,
        ),
        KeyTable(
            "Cluster",
            "dag-cluster",
            code("pandaflow.dagfile.CLUSTER_KEYS"),
            "`clusters.<label>`: the cluster job is named `<label>_<value>_...`.",
            tuple(clusters),
            defaults=False,
        ),
    ]


# ---------------------------------------------------------------- REST and the executor


def rest_tables() -> list[KeyTable]:
    """The fields of a job and of the submission bodies, as the REST API decodes them."""
    return [
        KeyTable(
            "Job",
            "rest-job",
            code("pandaflow.spec.Job"),
            "One job of `POST /api/v1/workflows` or `POST /api/v1/workflows/{id}/jobs`: a shell job gives "
            "`command`, a python job `buffer`.",
            tuple(struct_keys(spec.Job)),
        ),
        KeyTable(
            "Submission",
            "rest-submit",
            code("pandaflow.spec.SubmitRequest"),
            "The body of `POST /api/v1/workflows`: stored all or nothing.",
            tuple(struct_keys(spec.SubmitRequest)),
        ),
        KeyTable(
            "Appended jobs",
            "rest-append",
            code("pandaflow.spec.AppendRequest"),
            "The body of `POST /api/v1/workflows/{id}/jobs`.",
            tuple(struct_keys(spec.AppendRequest)),
        ),
    ]


def resource_table() -> KeyTable:
    """``PandaExecutor``'s ``resource_specification`` keys, with the job field each sets."""
    keys = []
    for key in struct_keys(spec.ResourceSpecification):
        field, factor = spec.RESOURCE_FIELDS[key.name]
        sets = f"sets {code(field)}" + (f" (× {number(factor)})" if factor is not None else "")
        meaning = f"{key.meaning}; {sets}" if key.meaning else sets
        keys.append(dataclasses.replace(key, default="not set", meaning=meaning))
    return KeyTable(
        "resource_specification",
        "resource-specification",
        code("pandaflow.spec.ResourceSpecification") + " and " + code("pandaflow.spec.RESOURCE_FIELDS"),
        "`app(..., parsl_resource_specification={...})` with `PandaExecutor`: any other key, or a "
        "value of the wrong type or range, raises parsl's `InvalidResourceSpecification` naming the "
        "key.",
        tuple(keys),
    )


# ---------------------------------------------------------------- queues


def docstring_keys(doc: str) -> dict[str, str]:
    """The ````key``  description```` list of a module docstring: key → description (continuation
    lines are the indented lines that follow)."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in textwrap.dedent(doc).splitlines():
        match = re.match(r"^``(\w+)``\s+(\S.*)$", line)
        if match:
            current = match.group(1)
            found[current] = match.group(2)
        elif current and line.startswith(" ") and line.strip():
            found[current] += " " + line.strip()
        else:
            current = None
    return {key: prose(text) for key, text in found.items()}


def _queue_meanings() -> dict[str, str]:
    return docstring_keys(queues.__doc__ or "")


def _meaning(meanings: dict[str, str], key: str, where: str) -> str:
    if key not in meanings:
        raise KeyError(
            f"{where} key {key!r} is not described: add ``{key}`` to the key list of its docstring"
        )
    return meanings[key]


def _json_kind(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "number"
    return {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object"}[kinds[0]]


def queue_tables() -> list[KeyTable]:
    """Brokerage keys (the :class:`Queue` dataclass) and harvester keys (``HARVESTER_KEYS``)."""
    meanings = _queue_meanings()
    fields = [f for f in dataclasses.fields(queues.Queue) if f.name != "extra"]
    brokerage = []
    for f in fields:
        kind = _json_kind(queues._FIELDS[f.name])
        if f.name in queues._CHOICES:
            kind = " or ".join(code(json.dumps(choice)) for choice in queues._CHOICES[f.name])
        elif f.name in queues._BOUNDS:
            low, high = queues._BOUNDS[f.name]
            kind += f" {number(low)}–{number(high)}" if high is not None else f" ≥ {number(low)}"
        elif kind in ("integer", "number"):
            kind += " ≥ 0"
        default = "required" if f.default is dataclasses.MISSING else code(json.dumps(f.default))
        brokerage.append(Key(f.name, kind, default, _meaning(meanings, f.name, "queue")))
    harvester = []
    for name, key in queues.HARVESTER_KEYS.items():
        kind = _json_kind(key.kind)
        if name == "provider":
            kind = "object: `name` and the provider's constructor arguments"
        elif key.minimum is not None:
            kind += f" ≥ {number(key.minimum)}"
        harvester.append(
            Key(name, kind, _harvester_default(key.default), _meaning(meanings, name, "harvester"))
        )
    source = code("pandaflow.server.jobs.queues")
    return [
        KeyTable(
            "Brokerage keys",
            "queue-brokerage",
            code("pandaflow.server.jobs.queues.Queue"),
            "One entry of a queue file's `queues` list (besides `queues`, a file may have a `description`). "
            "Unknown keys are refused.",
            tuple(brokerage),
        ),
        KeyTable(
            "Harvester keys",
            "queue-harvester",
            code("HARVESTER_KEYS") + " of " + source,
            "Kept for the harvester, which keeps pilots alive on queues that name a `provider`.",
            tuple(harvester),
        ),
    ]


def _harvester_default(default: Any) -> str:
    if not callable(default):
        return "none" if default is None else code(json.dumps(default))
    source = inspect.getsource(default)
    match = re.search(r"lambda \w+: \w+\.(?:setting\(\"(\w+)\"\)|(\w+))", source)
    if not match:
        return "computed from the queue"
    return "the queue's " + code(match.group(1) or match.group(2))


def provider_table() -> KeyTable:
    """The provider names a ``provider`` block may give (:func:`pandaflow.providers.known`)."""
    from pandaflow import providers

    keys = []
    for name in providers.known():
        kind = providers._REGISTRY[name]
        target = (
            kind.target
            if isinstance(kind.target, str)
            else f"{kind.target.__module__}:{kind.target.__name__}"
        )
        keys.append(Key(name, code(target), "", kind.description))
    return KeyTable(
        "Providers",
        "queue-providers",
        code("pandaflow.providers.known()"),
        "`provider.name`: every other key of the block is a keyword argument of the class's "
        "constructor, checked against its signature when the queue file is loaded.",
        tuple(keys),
        defaults=False,
    )


# ---------------------------------------------------------------- the server


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's annotated attributes (as mkdocstrings reads them)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    found = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            found[node.target.id] = prose(inspect.cleandoc(after.value.value))
    return found


def dataclass_keys(cls: type) -> list[Key]:
    """A dataclass's fields: annotation, default (a factory by name and docstring), attribute docstring."""
    docs = attribute_docs(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = code(repr(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            about = prose(inspect.getdoc(factory) or "")
            default = f"{code(factory.__module__ + '.' + factory.__qualname__ + '()')}" + (
                f": {about}" if about else ""
            )
        else:
            default = "required"
        if f.name not in docs:
            raise KeyError(f"{cls.__qualname__}.{f.name} has no docstring: write one under the field")
        keys.append(
            Key(f.name, code(f.type if isinstance(f.type, str) else f.type.__name__), default, docs[f.name])
        )
    return keys


def server_table() -> KeyTable:
    """:class:`ServerConfig`, what ``Server`` (and ``pandaflow server``) is configured with."""
    from pandaflow.server.app import ServerConfig

    return KeyTable(
        "ServerConfig",
        "server-config",
        code("pandaflow.server.app.ServerConfig"),
        "`Server(ServerConfig(...))` runs a job server in the process; `pandaflow server` builds "
        "one from its options.",
        tuple(dataclass_keys(ServerConfig)),
    )


# ---------------------------------------------------------------- the page


def tables() -> dict[str, list[KeyTable]]:
    """Every key table, by section."""
    return {
        "DAG files": dag_tables(),
        "REST job fields": rest_tables(),
        "Executor resource_specification": [resource_table()],
        "Queue descriptions": [*queue_tables(), provider_table()],
        "Server": [server_table()],
    }


def render() -> str:
    """The configuration reference: one section per kind of configuration, one table per model."""
    parts = []
    for section, found in tables().items():
        parts.append(f"## {section} {{#{anchor(section)}}}")
        parts += [t.markdown() for t in found]
    return "\n\n".join(parts) + "\n"
