"""DAG files: a workflow of jobs linked by data products, written as JSON or YAML.

A DAG file names the workflow, the data products that exist already (``available``), the
resource defaults of each task (pipeline label) and the jobs, each with the products it reads
(``inputs``) and writes (``outputs``) and/or the jobs it waits for (``parents``). The format
is described in ``docs/dag.md``.

:func:`load` reads and validates a file once, with errors that name the file and the key path
(``dag.yaml: jobs[3].inputs: expected a list of names``), checks the graph itself with the
server's own rules (:func:`pandaflow.server.jobs.dag.check`: duplicate names, unknown parents, two
writers, inputs nobody writes, cycles), expands the task defaults into every job and returns
a :class:`DagFile` whose :attr:`~DagFile.body` is what ``POST /api/v1/workflows`` takes.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pandaflow import clustering, spec
from pandaflow.problems import check_value, describe, field_problems, field_type, show
from pandaflow.server.jobs import dag

#: Keys of a task's defaults (:class:`pandaflow.spec.JobDefaults`); every one may be overridden per job.
TASK_KEYS = spec.JobDefaults.__struct_fields__
_DAG_KEYS = ("inputs", "outputs", "parents")
#: Keys of a job: those of the job specification, with ``label`` (an alias of ``task``) and ``vars``
#: (values for the command template) that only DAG files have.
JOB_KEYS = ("name", "task", "label", "vars", *_DAG_KEYS, *TASK_KEYS)
TOP_KEYS = ("name", "owner", "available", "sites", "site", "tasks", "clusters", "jobs")
CLUSTER_KEYS = ("tasks", "dimensions")
DEFAULT_TASK = spec.DEFAULT_TASK

_NAME_MAX = spec.NAME_MAX  # job, task and workflow names


class DagFileError(ValueError):
    """A DAG file that cannot be submitted; ``problems`` holds every ``file: key: what`` message."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in the DAG file:\n  {shown}{more}")


@dataclass
class DagFile:
    """A validated DAG file, task defaults already expanded into its jobs."""

    path: str
    name: str
    owner: str | None
    available: list[str]
    jobs: list[dict[str, Any]]  # job specs as the REST API takes them
    labels: dict[str, int] = field(default_factory=dict)  # task -> number of jobs, in file order
    clustered: dict[str, int] = field(default_factory=dict)  # cluster label -> jobs of the file in it
    sites: dict[str, float] | None = None  # site -> share (the server checks the names)
    site: str | None = None  # pinned to one site

    @property
    def body(self) -> dict[str, Any]:
        """The request body of ``POST /api/v1/workflows``."""
        body: dict[str, Any] = {"name": self.name, "jobs": self.jobs}
        if self.owner is not None:
            body["owner"] = self.owner
        if self.available:
            body["available"] = self.available
        if self.sites is not None:
            body["sites"] = self.sites
        if self.site is not None:
            body["site"] = self.site
        return body

    def roots(self) -> list[str]:
        """Names of the jobs that are ready as soon as the workflow is stored (no unmet input)."""
        have = set(self.available)
        return [
            j["name"]
            for j in self.jobs
            if not j.get("parents") and all(p in have for p in j.get("inputs", ()))
        ]

    def plan(self) -> dict[str, Any]:
        """What a submission would store: jobs per task, the roots, and the number of products."""
        roots = self.roots()
        products = {p for j in self.jobs for p in j.get("outputs", ())}
        return {
            "file": self.path,
            "name": self.name,
            "n_jobs": len(self.jobs),
            "tasks": dict(self.labels),
            "n_products": len(products),
            "available": len(self.available),
            "n_roots": len(roots),
            "roots": roots,
            "clustered": dict(self.clustered),
            "sites": self.sites or ({self.site: 1} if self.site else None),
        }


# ---------------------------------------------------------------- reading


def read(path: str | Path) -> Any:
    """The parsed content of a JSON or YAML file (``.json`` is JSON; anything else is YAML,
    which also reads JSON). Raises :class:`DagFileError` naming the file and the position."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DagFileError([f"{where}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DagFileError([f"{where}: cannot read it: {exc}"]) from None
    if str(path).lower().endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DagFileError(
                [f"{where}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"]
            ) from None
    try:
        import yaml
    except ImportError:
        raise DagFileError(
            [f"{where}: reading YAML needs PyYAML (pip install pyyaml), or write the DAG as .json"]
        ) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster on big DAGs
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DagFileError([f"{where}: {at}not valid YAML: {problem}"]) from None


def load(path: str | Path) -> DagFile:
    """Read, validate and expand a DAG file; raise :class:`DagFileError` listing every problem."""
    return parse(read(path), str(path))


# ---------------------------------------------------------------- validation


class _Checker:
    """Collects ``file: key.path: message`` problems while reading the document."""

    def __init__(self, where: str):
        self.where = where
        self.problems: list[str] = []

    def bad(self, key: str, message: str) -> None:
        self.problems.append(f"{self.where}: {key}: {message}" if key else f"{self.where}: {message}")

    def name(self, key: str, value: Any, limit: int = _NAME_MAX) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.bad(key, f"expected a non-empty string, got {_show(value)}")
            return None
        if len(value) > limit:
            self.bad(key, f"expected at most {limit} characters, got {len(value)}")
            return None
        return value

    def spec(self, key: str, value: Any, tp: Any) -> bool:
        """Check ``value`` against a type of :mod:`pandaflow.spec`; False when refused."""
        why = check_value(value, tp, key)
        if why:
            self.problems.append(f"{self.where}: {why}")
        return why is None

    def fields(self, key: str, values: dict[str, Any], struct: type) -> dict[str, Any] | None:
        """Task defaults or job fields checked by :mod:`pandaflow.spec` (``null`` refused: in a DAG
        file it is a key left without its value); None when any is refused."""
        values = {k: _env(v) if k == "env" else v for k, v in values.items()}
        found = field_problems({k: v for k, v in values.items() if v is not None}, struct, key)
        for k, v in values.items():
            if v is None:
                wanted = describe(field_type(struct, k, nullable=False))
                found.append(f"{key}.{k}: expected {wanted}, got nothing (null)")
        self.problems.extend(f"{self.where}: {p}" for p in found)
        return None if found else values


def _env(value: Any) -> Any:
    """YAML reads ``A: 1`` as a number: environment values that are numbers become strings."""
    if not isinstance(value, dict):
        return value
    return {
        k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for k, v in value.items()
    }


_show = show


def _unknown(check: _Checker, key: str, given: dict, allowed: tuple[str, ...]) -> bool:
    unknown = sorted(set(given) - set(allowed), key=str)
    for k in unknown:
        check.bad(f"{key}.{k}" if key else str(k), f"unknown key; allowed: {', '.join(allowed)}")
    return bool(unknown)


def _sites(check: _Checker, doc: dict) -> tuple[dict[str, float] | None, str | None]:
    """The workflow's ``sites`` (shares) or ``site`` (pinned); the server checks the names exist."""
    if "sites" in doc and "site" in doc:
        check.bad("site", "give 'sites' (shares over several sites) or 'site' (pin to one), not both")
        return None, None
    for key in ("sites", "site"):
        if key in doc and check.spec(key, doc[key], field_type(spec.SubmitRequest, key)):
            return (doc[key], None) if key == "sites" else (None, doc[key])
    return None, None


def _tasks(check: _Checker, raw: Any) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        check.bad("tasks", f"expected a mapping of task (label) names to defaults, got {_show(raw)}")
        return {}
    tasks: dict[str, dict[str, Any]] = {}
    for label, defaults in raw.items():
        key = f"tasks.{label}"
        if check.name(key, label) is None:
            continue
        if defaults is None:
            defaults = {}
        if not isinstance(defaults, dict):
            check.bad(key, f"expected a mapping of defaults ({', '.join(TASK_KEYS)}), got {_show(defaults)}")
            continue
        if _unknown(check, key, defaults, TASK_KEYS):
            continue
        values = check.fields(key, defaults, spec.JobDefaults)
        if values is not None:
            tasks[label] = values
    return tasks


def _clusters(check: _Checker, raw: Any, tasks: dict[str, dict[str, Any]]) -> list[clustering.ClusterSpec]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        check.bad("clusters", f"expected a mapping of labels to {{tasks, dimensions}}, got {_show(raw)}")
        return []
    specs: list[clustering.ClusterSpec] = []
    owner: dict[str, str] = {}
    for label, entry in raw.items():
        key = f"clusters.{label}"
        if check.name(key, label) is None:
            continue
        if not isinstance(entry, dict):
            check.bad(key, f"expected a mapping with {', '.join(CLUSTER_KEYS)}, got {_show(entry)}")
            continue
        if _unknown(check, key, entry, CLUSTER_KEYS):
            continue
        members = entry.get("tasks")
        if not isinstance(members, list) or not members or not all(isinstance(t, str) for t in members):
            check.bad(f"{key}.tasks", f"expected a non-empty list of task names, got {_show(members)}")
            continue
        dims = entry.get("dimensions", [])
        if not isinstance(dims, list) or not all(isinstance(d, str) and d.isidentifier() for d in dims):
            check.bad(f"{key}.dimensions", f"expected a list of variable names, got {_show(dims)}")
            continue
        for task in members:
            if tasks and task not in tasks:
                check.bad(f"{key}.tasks", f"unknown task {task!r}; tasks declared: {', '.join(tasks)}")
            elif task in owner:
                check.bad(f"{key}.tasks", f"task {task!r} is already in cluster {owner[task]!r}")
            owner.setdefault(task, label)
        if label in tasks and label not in members:
            check.bad(key, f"the cluster label {label!r} is the name of another task; choose another label")
        specs.append(clustering.ClusterSpec(label, tuple(members), tuple(dims)))
    return specs


def _template_fields(template: str) -> list[str]:
    """The placeholders of a command template (``{name}``, ``{visit:03d}`` -> name, visit)."""
    found = []
    for _text, name, _spec, _conv in string.Formatter().parse(template):
        if name is not None:
            found.append(name)
    return found


def _command(check: _Checker, key: str, template: str, values: dict[str, Any]) -> str | None:
    try:
        fields = _template_fields(template)
    except ValueError as exc:
        check.bad(key, f"not a valid command template ({exc}); write {{{{ and }}}} for literal braces")
        return None
    missing = [f for f in fields if not f.isidentifier() or f not in values]
    if missing:
        check.bad(
            key,
            f"unknown placeholder {{{missing[0]}}}; known here: {', '.join(sorted(values))} "
            "(add it to the job's vars, or write {{ and }} for literal braces)",
        )
        return None
    try:
        return template.format_map(values)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        check.bad(key, f"cannot fill the command template: {exc}")
        return None


def _job(
    check: _Checker, i: int, raw: Any, tasks: dict[str, dict[str, Any]], declared: bool
) -> dict[str, Any] | None:
    key = f"jobs[{i}]"
    if not isinstance(raw, dict):
        check.bad(key, f"expected a mapping (a job), got {_show(raw)}")
        return None
    if _unknown(check, key, raw, JOB_KEYS):
        return None
    before = len(check.problems)
    name = check.name(f"{key}.name", raw.get("name"))
    if "task" in raw and "label" in raw:
        check.bad(f"{key}.label", "give 'task' or its alias 'label', not both")
    task_key = "label" if "label" in raw else "task"
    label = DEFAULT_TASK
    if task_key in raw:
        label = check.name(f"{key}.{task_key}", raw[task_key]) or DEFAULT_TASK
        if declared and label not in tasks:
            check.bad(
                f"{key}.{task_key}",
                f"unknown task {label!r}; tasks declared: {', '.join(tasks) or '(none)'} "
                "(declare it under 'tasks' or fix the name)",
            )
    variables = raw.get("vars", {})
    if not isinstance(variables, dict) or not all(isinstance(k, str) and k.isidentifier() for k in variables):
        check.bad(f"{key}.vars", f"expected a mapping of identifiers to values, got {_show(variables)}")
        variables = {}
    given = check.fields(key, {k: raw[k] for k in (*_DAG_KEYS, *TASK_KEYS) if k in raw}, spec.Job)
    if given is None or len(check.problems) > before:
        return None
    dag_fields = {k: given.pop(k) for k in _DAG_KEYS if k in given}
    overrides = given
    defaults = tasks.get(label, {})
    job: dict[str, Any] = {"name": name, "task": label}
    for k in TASK_KEYS:
        if k == "env":
            env = {**defaults.get("env", {}), **overrides.get("env", {})}
            if env:
                job["env"] = env
        elif k in overrides:
            job[k] = overrides[k]
        elif k in defaults:
            job[k] = defaults[k]
    job.update({k: v for k, v in dag_fields.items() if v})
    if "command" not in job:
        where = f"tasks.{label}.command" if label in tasks else f"{key}.command"
        check.bad(f"{key}.command", f"missing: give the job a command, or its task a template ({where})")
        return None
    values = {
        "name": name,
        "task": label,
        "label": label,
        "inputs": " ".join(job.get("inputs", ())),
        "outputs": " ".join(job.get("outputs", ())),
        **variables,
    }
    # A task's template is filled per job: name the job, and where the template came from.
    source = f"{key}.command" if "command" in overrides else f"{key}.command (template of tasks.{label})"
    command = _command(check, source, job["command"], values)
    if command is None:
        return None
    job["command"] = command
    job["_vars"] = variables  # for clustering by dimension; removed before the job is sent
    return job


def parse(doc: Any, where: str = "<dag>") -> DagFile:
    """Validate a parsed DAG document (``where`` names it in messages) and expand its jobs."""
    check = _Checker(where)
    if not isinstance(doc, dict):
        raise DagFileError([f"{where}: expected a mapping with {', '.join(TOP_KEYS)}, got {_show(doc)}"])
    _unknown(check, "", doc, TOP_KEYS)
    name = check.name("name", doc.get("name"))
    owner = doc.get("owner")
    if owner is not None and not check.spec("owner", owner, field_type(spec.SubmitRequest, "owner")):
        owner = None
    available = doc.get("available", [])
    if not check.spec("available", available, field_type(spec.SubmitRequest, "available")):
        available = []
    sites, site = _sites(check, doc)
    tasks = _tasks(check, doc.get("tasks"))
    raw_jobs = doc.get("jobs")
    jobs: list[dict[str, Any]] = []
    if not isinstance(raw_jobs, list) or not raw_jobs:
        check.bad("jobs", f"expected a non-empty list of jobs, got {_show(raw_jobs)}")
    else:
        declared = doc.get("tasks") is not None
        for i, raw in enumerate(raw_jobs):
            job = _job(check, i, raw, tasks, declared)
            if job is not None:
                jobs.append(job)
    if check.problems:
        raise DagFileError(check.problems)
    declared_available = set(available or ())
    for i, job in enumerate(jobs):
        for product in job.get("outputs", ()):
            if product in declared_available:
                check.bad(
                    f"jobs[{i}].outputs",
                    f"product {product!r} is declared available and also written by job {job['name']!r}; "
                    "drop it from one of the two",
                )
    if check.problems:
        raise DagFileError(check.problems)
    specs = _clusters(check, doc.get("clusters"), tasks)
    if check.problems:
        raise DagFileError(check.problems)
    variables = [job.pop("_vars") for job in jobs]
    clustered = dict(Counter(s.label for job in jobs for s in specs if job["task"] in s.tasks))
    if specs:
        unclustered = jobs
        jobs, problems = clustering.apply(jobs, variables, specs)
        if problems:
            raise DagFileError([f"{where}: clusters: {p}" for p in problems])
        graph = dag.check(unclustered, available or ())  # the file's own graph first: clearer messages
        if graph:
            raise DagFileError(
                [f"{where}: {p}" if p.startswith("jobs[") else f"{where}: jobs: {p}" for p in graph]
            )
    graph = dag.check(jobs, available or ())
    if graph and specs:
        raise DagFileError([f"{where}: clusters: after clustering, {p}" for p in graph])
    if graph:
        # The server's messages start with jobs[i] or name the jobs; both are keys under 'jobs'.
        raise DagFileError(
            [f"{where}: {p}" if p.startswith("jobs[") else f"{where}: jobs: {p}" for p in graph]
        )
    labels = dict(Counter(j["task"] for j in jobs))
    return DagFile(path=where, name=name or "", owner=owner, available=list(available or []), jobs=jobs,
                   labels=labels, clustered=clustered, sites=sites, site=site)  # fmt: skip
