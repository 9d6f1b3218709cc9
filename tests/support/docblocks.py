"""Every fenced code block of README.md, docs/ and examples/ run or checked as written.

The blocks are found by sybil (its Markdown lexers); this module says what each language means
(the convention is written down in docs/contributing.md):

- ``python``: executed; one namespace per page.
- ``console``: ``$ `` lines are commands run by bash, the lines after each are its expected
  output, compared as doctest does (ELLIPSIS, NORMALIZE_WHITESPACE). ``cmd &`` runs in the
  background for the rest of the page.
- ``bash`` / ``sh``: scripts for other machines; never run, so each must follow a
  ``<!-- not-run: reason -->`` comment; their ``pandaflow`` command lines are parsed by the CLI
  and the repository paths they name must exist.
- ``yaml`` / ``json``: loaded by the project's own validators (chosen by content, see
  :func:`validate_config`).
- ``text``: not code.

A page runs in a fresh working directory (``configs``, ``examples``, ``deploy`` and ``scripts``
link to the repository's) with its own ``PANDAFLOW_HOME``; whatever it started in the background
is stopped at the end of the page.
"""

from __future__ import annotations

import contextlib
import doctest
import getpass
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import click
import requests
import yaml
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, RawFencedCodeBlockLexer

REPO = Path(__file__).resolve().parents[2]
LINKED = ("configs", "examples", "deploy", "scripts")
LANGUAGES = ("python", "console", "bash", "sh", "yaml", "json", "text")
COMMAND_TIMEOUT = 600.0
CHECK = doctest.OutputChecker()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


class Page:
    """One document's working directory, environment, and background processes."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="pandaflow-doc-")
        root = Path(self.tmp.name)
        self.cwd = root / "work"
        self.cwd.mkdir()
        for name in LINKED:
            (self.cwd / name).symlink_to(REPO / name)
        self.home = root / "home"
        self.home.mkdir()
        venv_bin = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PANDAFLOW_HOME": str(self.home),
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(root)),
            "COLUMNS": "200",
        }
        self.env.setdefault("USER", getpass.getuser())
        for name in ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN"):
            self.env.pop(name, None)
        self.background: list[tuple[str, subprocess.Popen]] = []
        self.not_run: str | None = None
        self.file: str | None = None  # the next block is this repository file, shown as it is

    # ---------------------------------------------------------------- python blocks
    def enter(self) -> dict[str, Any]:
        """Make the process look like the page's shell (cwd, environment) while a python block runs."""
        saved = {"cwd": os.getcwd(), "env": dict(os.environ)}
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.env)
        return saved

    def leave(self, saved: dict[str, Any]) -> None:
        self.env = dict(os.environ)
        os.chdir(saved["cwd"])
        os.environ.clear()
        os.environ.update(saved["env"])

    # ---------------------------------------------------------------- console blocks
    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Run one command line in bash as the page's shell would: ``cd`` and ``export`` carry over."""
        state = Path(self.tmp.name) / "state"
        script = (
            f"{command}\n__rc=$?\n"
            f"{{ pwd; env -0; }} > {shlex.quote(str(state))} 2>/dev/null\nexit $__rc\n"
        )
        proc = subprocess.run(
            ["bash", "-c", script], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )  # fmt: skip
        if state.exists():
            cwd, _, env = state.read_text().partition("\n")
            self.cwd = Path(cwd)
            self.env = dict(item.split("=", 1) for item in env.split("\0") if "=" in item)
            state.unlink()
        return proc.returncode, proc.stdout

    def start(self, command: str) -> None:
        """``command &``: started in its own process group, waited for until it is up."""
        log = open(Path(self.tmp.name) / f"bg-{len(self.background)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}" if "|" not in command else command], cwd=self.cwd,
            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.background.append((command, proc))
        words = shlex.split(command, comments=True)
        if words[:2] == ["pandaflow", "server"]:
            self._wait_server(proc, log.name)
        elif words[:2] == ["pandaflow", "pilot"]:
            self._wait_pilot(proc, log.name)

    def _client(self) -> tuple[str, dict[str, str]] | None:
        try:
            info = json.loads((self.home / "server.json").read_text())
            token = (self.home / "token").read_text().strip()
        except (OSError, ValueError):
            return None
        return info["url"], {"Authorization": f"Bearer {token}"}

    def _pilots(self) -> int | None:
        where = self._client()
        if where is None:
            return None
        try:
            reply = requests.get(where[0] + "/api/v1/pilots", headers=where[1], timeout=5)
        except requests.RequestException:
            return None
        if reply.status_code != 200:
            return None
        return sum(1 for p in reply.json()["pilots"] if p["status"] == "active")

    def _wait(self, proc: subprocess.Popen, log: str, ready: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ready():
                return
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited ({proc.returncode}):\n{Path(log).read_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{what} not up after 60 s:\n{Path(log).read_text()[-3000:]}")

    def _wait_server(self, proc: subprocess.Popen, log: str) -> None:
        self._wait(proc, log, lambda: self._pilots() is not None, "the background server")

    def _wait_pilot(self, proc: subprocess.Popen, log: str) -> None:
        before = self._pilots() or 0
        self._wait(proc, log, lambda: (self._pilots() or 0) > before, "the background pilot")

    def close(self) -> None:
        for _, proc in reversed(self.background):
            _stop(proc)
        self.tmp.cleanup()


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    # what the page started in the background may have started more (a bps local server)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_PAGES: dict[int, Page] = {}  # by id(namespace): a page's namespace holds only what its code made


def page(example: Example) -> Page:
    return _PAGES[id(example.namespace)]


# -------------------------------------------------------------------- the languages


def _take_not_run(example: Example) -> str | None:
    state = page(example)
    reason, state.not_run = state.not_run, None
    if state.file is not None:
        reason, state.file = f"a copy of {state.file}", None
    return reason


def _copy_problem(example: Example) -> str | None:
    """A block marked ``<!-- file: PATH -->`` must be that file, word for word."""
    path = page(example).file
    if path is None:
        return None
    try:
        text = (REPO / path).read_text()
    except OSError as exc:
        return f"<!-- file: {path} -->: {exc}"
    if text.strip() != str(example.parsed).strip():
        return f"the block differs from {path}: copy the file into the page again"
    return None


def evaluate_python(example: Example) -> str | None:
    if problem := _copy_problem(example):
        return problem
    if _take_not_run(example) is not None:
        compile(example.parsed, str(example.path), "exec")
        return None
    state = page(example)
    saved = state.enter()
    try:
        return PythonEvaluator()(example)
    finally:
        state.leave(saved)


def console_commands(source: str) -> list[tuple[str, str, int]]:
    """``$ `` commands of a console block with their expected output and line offset."""
    commands: list[tuple[str, str, int]] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            raise AssertionError(f"console block: line {i + 1} is output before any `$ ` command: {line!r}")
        start = i
        command = line[2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + "\n" + lines[i]
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        commands.append((command, "\n".join(output).strip("\n"), start))
    return commands


BACKGROUND = re.compile(r"^(?P<command>.*?)\s&\s*(#.*)?$", re.DOTALL)


def evaluate_console(example: Example) -> str | None:
    commands = console_commands(example.parsed)
    if (reason := _take_not_run(example)) is not None:
        return check_script("\n".join(command for command, _, _ in commands), reason)
    state = page(example)
    for command, want, offset in commands:
        where = f"{example.path}:{example.line + 1 + offset}: `{command}`"
        background = BACKGROUND.match(command)
        if background:
            state.start(background.group("command"))
            continue
        rc, got = state.run(command)
        if rc != 0 and not want.startswith("Error:"):
            return f"{where} exited {rc}:\n{got}"
        if want and not CHECK.check_output(want + "\n", got, FLAGS):
            shown = textwrap.indent(got, "    ")
            return f"{where} printed:\n{shown}\nexpected:\n{textwrap.indent(want, '    ')}"
    return None


# -------------------------------------------------------------------- scripts not run here

PATHS = re.compile(r"(?<![\w./-])((?:configs|deploy|scripts|examples|docs)/[\w./-]*[\w/])")


def check_script(source: str, reason: str | None) -> str | None:
    """A script that is not run here: said why, its ``pandaflow`` commands parse, its paths exist."""
    if not reason or not reason.strip():
        return "a block that is not run must say why: <!-- not-run: <reason> -->"
    problems = []
    for line in _logical_lines(source):
        for words in _commands(line):
            for path in _paths(words):
                if not (REPO / path).exists():
                    problems.append(f"no such file in the repository: {path}")
            if words[0] == "pandaflow":
                problem = check_cli(words[1:])
                if problem:
                    problems.append(f"`{' '.join(words)}`: {problem}")
    return "\n".join(problems) or None


def _paths(words: list[str]) -> list[str]:
    """The repository paths a command names (for kubectl, only its -f/-k files: ``deploy/NAME``
    is a Deployment there)."""
    if words[0] in ("kubectl", "oc"):
        words = [w for before, w in zip(words, words[1:], strict=False) if before in ("-f", "-k")]
    return [p for word in words for p in PATHS.findall(word) if "*" not in p]


def _logical_lines(source: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", source)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


REDIRECT = re.compile(r"(?<![\w$])\d*(?:>>?|<)&?\s*[^\s;&|]+")


def _commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ``;``, ``&&``, ``||``, ``|``, ``&``)."""
    line = REDIRECT.sub(" ", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:
        return []
    commands, current = [], []
    for token in tokens:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def check_cli(args: list[str]) -> str | None:
    """Parse ``pandaflow ARGS`` with the CLI itself: unknown commands and options are problems."""
    from pandaflow.cli import main

    command: click.Command = main
    ctx = None
    rest = list(args)
    while True:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ctx = command.make_context(command.name or "pandaflow", list(rest), parent=ctx)
        except click.exceptions.Exit:  # --help, --version
            return None
        except click.BadParameter as exc:
            if any(word == "..." or word.isupper() for word in rest):
                return None  # `--cores N`: a value to fill in
            return exc.format_message()
        except click.UsageError as exc:
            return exc.format_message()
        if not isinstance(command, click.Group):
            return None
        sub = _words_left(ctx)[:1]
        if not sub:
            return None
        found = command.get_command(ctx, sub[0])
        if found is None:
            return f"no command {sub[0]!r} in `{ctx.command_path}`"
        rest = _words_left(ctx)[1:]
        command = found


def _words_left(ctx: click.Context) -> list[str]:
    """The words after a group's options: its subcommand and what follows (click 8.2 keeps the
    subcommand in ``protected_args``, deprecated for click 9, where ``args`` holds them all)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*getattr(ctx, "protected_args", []), *ctx.args]


def evaluate_script(example: Example) -> str | None:
    if problem := _copy_problem(example):
        return problem
    return check_script(example.parsed, _take_not_run(example))


# -------------------------------------------------------------------- configuration blocks


def validate_config(text: str, language: str) -> str:
    """Load a YAML/JSON block with the validator its content calls for; returns what it was.
    Raises (with the validator's message) when it does not validate."""
    stripped = text.strip()
    if language == "json" and stripped.startswith('"provider"'):
        return _provider(json.loads("{" + stripped + "}")["provider"])
    docs = [json.loads(line) for line in stripped.splitlines()] if _json_lines(stripped, language) else [
        json.loads(stripped) if language == "json" else yaml.safe_load(stripped)
    ]
    kinds = [_one_config(doc) for doc in docs]
    return ", ".join(kinds)


def _json_lines(text: str, language: str) -> bool:
    if language != "json" or "\n" not in text:
        return False
    try:
        json.loads(text)
        return False
    except ValueError:
        return True


def _one_config(doc: Any) -> str:
    from pandaflow import dagfile
    from pandaflow.server.jobs import queues

    if not isinstance(doc, dict):
        raise AssertionError(f"a configuration block must be a mapping, got {type(doc).__name__}")
    if "queues" in doc:
        queues.parse_queues(doc, "<doc>")
        return "queue file"
    if "jobs" in doc and "tasks" not in doc and "clusters" not in doc and "available" not in doc:
        return _submission(doc)
    if "jobs" in doc:
        dagfile.parse(doc, "<doc>")
        return "DAG file"
    if set(doc) == {"clusters"}:
        base = yaml.safe_load((REPO / "configs/dags/rubin-small.yaml").read_text())
        dagfile.parse({**base, **doc}, "<doc: rubin-small.yaml with this clusters section>")
        return "clusters section (applied to configs/dags/rubin-small.yaml)"
    if "wmsServiceClass" in doc:
        return _bps(doc)
    if "engine" in doc:
        from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

        load_config_yaml(yaml.safe_dump(doc))
        return "Globus Compute endpoint config"
    raise AssertionError(
        f"no validator for a block with keys {sorted(doc)}: add one to tests/support/docblocks.py"
    )


def _submission(doc: dict) -> str:
    """A REST workflow submission body, decoded as the server decodes it."""
    from pandaflow import spec

    body = spec.decode_submission(json.dumps(doc).encode(), spec.SubmitRequest)
    bad = [job.problem for job in body.jobs if isinstance(job, spec.Invalid)]
    if bad:
        raise AssertionError(f"the server would refuse it: {bad}")
    return "workflow submission"


def _provider(block: dict) -> str:
    from pandaflow.server.jobs import queues

    queue = {"name": "doc", "max_workers": 1, "provider": block}
    parsed = queues.parse_queues({"queues": [queue]}, "<doc>")
    return f"provider block {parsed[0].extra['provider']['name']!r}"


def _bps(doc: dict) -> str:
    import importlib

    from lsst.ctrl.bps import BaseWmsService, BpsConfig

    BpsConfig(doc)  # bps reads it
    module, _, name = doc["wmsServiceClass"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not issubclass(cls, BaseWmsService):
        raise AssertionError(f"{doc['wmsServiceClass']} is not a bps BaseWmsService")
    return "bps config"


def evaluate_config(example: Example) -> str | None:
    if problem := _copy_problem(example):
        return problem
    _take_not_run(example)  # a configuration is checked whether or not it is run anywhere
    language = example.region.lexemes["language"]
    try:
        validate_config(example.parsed, language)
    except Exception as exc:  # the validator's message is the point
        return f"{language} block does not validate: {type(exc).__name__}: {exc}"
    return None


def evaluate_nothing(example: Example) -> str | None:
    if problem := _copy_problem(example):
        return problem
    _take_not_run(example)
    return None


EVALUATORS = {
    "python": evaluate_python,
    "console": evaluate_console,
    "bash": evaluate_script,
    "sh": evaluate_script,
    "yaml": evaluate_config,
    "json": evaluate_config,
    "text": evaluate_nothing,
}


# -------------------------------------------------------------------- sybil wiring


def _fenced(document: Document) -> list[Region]:
    lexer = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE))
    regions = list(lexer(document))
    # a block shown inside a longer fence is part of that block
    return [r for r in regions if not any(o is not r and o.start <= r.start < o.end for o in regions)]


def parse_page(document: Document) -> Any:
    """The regions of a page: fenced blocks, hidden set-up blocks and the marks before blocks
    (``not-run``, ``file``), leaving alone whatever is shown inside a fenced block."""
    fenced = _fenced(document)
    for region in fenced:
        language = region.lexemes["language"].strip()
        region.lexemes["language"] = language
        region.parsed = region.lexemes["source"]
        region.evaluator = EVALUATORS.get(language, _unknown_language)
        yield region

    def outside(region: Region) -> bool:
        return not any(f.start <= region.start < f.end for f in fenced)

    hidden = DirectiveInHTMLCommentLexer(directive="invisible-code-block", arguments="python|console")
    for region in filter(outside, hidden(document)):  # set-up a page needs but a reader does not
        language = region.lexemes["arguments"]
        region.lexemes["language"] = language
        region.parsed = region.lexemes["source"]
        region.evaluator = EVALUATORS[language]
        yield region
    marks = DirectiveInHTMLCommentLexer(directive="not-run", arguments=".*?")
    for region in filter(outside, marks(document)):
        reason = region.lexemes["arguments"].strip()

        def not_run(example: Example, reason: str = reason) -> None:
            page(example).not_run = reason or " "

        yield Region(region.start, region.end, parsed=reason, evaluator=not_run)
    needs = DirectiveInHTMLCommentLexer(directive="requires", arguments=r"\S+")
    for region in filter(outside, needs(document)):
        service = region.lexemes["arguments"].strip()
        yield Region(region.start, region.end, parsed=service, evaluator=_requires)
    for region in filter(outside, DirectiveInHTMLCommentLexer(directive="file", arguments=r"\S+")(document)):
        path = region.lexemes["arguments"].strip()

        def copy_of(example: Example, path: str = path) -> None:
            page(example).file = path

        yield Region(region.start, region.end, parsed=path, evaluator=copy_of)


def _unknown_language(example: Example) -> str:
    language = example.region.lexemes["language"]
    return (
        f"a fenced block must name one of {', '.join(LANGUAGES)} (got {language!r}): "
        "see docs/contributing.md"
    )


REQUIRES = {  # service: (the variable the test command sets, the one that makes it required)
    "postgres": ("PANDAFLOW_TEST_PG_URL", "PANDAFLOW_TEST_PG_REQUIRED"),
    "slurm": ("PANDAFLOW_TEST_SLURM", "PANDAFLOW_TEST_SLURM_REQUIRED"),
}


def _requires(example: Example) -> str | None:
    """``<!-- requires: postgres -->``: the rest of the page needs the service the test command
    starts; without it the page is skipped, or fails where the service is required (CI)."""
    import pytest

    service = str(example.parsed)
    if service not in REQUIRES:
        return f"unknown service {service!r} in <!-- requires: -->; known: {', '.join(REQUIRES)}"
    given, required = REQUIRES[service]
    if os.environ.get(given):
        return None
    if os.environ.get(required) == "1":
        return f"this page needs {service} ({given}), which the test command must provide"
    pytest.skip(f"{example.path}: needs {service} ({given} is not set)")


def setup(namespace: dict[str, Any]) -> None:
    _PAGES[id(namespace)] = Page()
    namespace["__name__"] = "__main__"  # as in a script: parsl sends its functions by value


def teardown(namespace: dict[str, Any]) -> None:
    import parsl

    try:
        parsl.dfk().cleanup()
    except Exception:  # no parsl config loaded on this page
        pass
    finally:
        parsl.clear()
    _PAGES.pop(id(namespace)).close()


PATTERNS = ("README.md", "docs/*.md", "docs/*/*.md", "examples/*.md", "examples/*/*.md")


def sybil() -> Sybil:
    return Sybil(parsers=[parse_page], path=str(REPO), name="docs")


def pages() -> list[Path]:
    """The Markdown pages whose blocks are tested."""
    found = {path for pattern in PATTERNS for path in REPO.glob(pattern)}
    return sorted(found)


def run_page(path: Path) -> None:
    """Evaluate every block of one page in order, in the page's own directory and home."""
    document = sybil().parse(path)
    setup(document.namespace)
    try:
        for example in document:
            example.evaluate()
    finally:
        teardown(document.namespace)
