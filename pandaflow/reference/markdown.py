"""Markdown building blocks of the generated reference: table cells, tables, code spans, anchors,
and one readable type for a JSON schema (the same words for REST fields and configuration keys)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pandaflow.spec import INT_MAX, INT_MIN

#: The bounds of the database's 32-bit integer columns, written as people read them.
_BOUNDS = {INT_MAX: "2³¹−1", INT_MIN: "−2³¹"}
_LONG_PATTERN = 24  # longer patterns are left to the description (query filters list their choices)


def code(text: Any) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds."""
    text = str(text)
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`"
)


def roles(text: str) -> str:
    """reST docstring markup as Markdown, whitespace kept: a Sphinx role (``:class:`~a.B```) becomes
    a code span of the name it points at (the last part with ``~``), and a paragraph ending in
    ``::`` (a literal block follows, indented) ends in ``:``. ``double backticks`` are Markdown
    code spans already."""
    text = ROLE.sub(_role, text)
    return re.sub(r"(\S)::[ \t]*$", r"\1:", text, flags=re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    target = match.group("target")
    if "<" in target and target.endswith(">"):  # :class:`title <target>`
        return code(target.split("<", 1)[0].strip())
    return code(target.rsplit(".", 1)[-1] if match.group("tilde") else target)


def prose(text: str) -> str:
    """Docstring or description text as one Markdown line (:func:`roles`, whitespace collapsed)."""
    return " ".join(roles(text).split())


def cell(text: Any) -> str:
    """A value safe inside a Markdown table cell: one line, pipes outside code spans escaped (the
    table extension leaves those inside code spans alone)."""
    parts = re.split(r"(`+[^`]*?`+)", prose(str(text)))
    return "".join(part if part.startswith("`") else part.replace("|", "\\|") for part in parts)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; every cell goes through :func:`cell` unless it is already Markdown."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def anchor(*parts: str) -> str:
    """A heading id made of ``parts`` (lower case, words joined by dashes)."""
    return "-".join(re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in parts if part)


def number(value: float) -> str:
    """A bound as people read it: 2³¹−1 for the integer columns' maximum, no ``.0`` on whole numbers."""
    if value in _BOUNDS and float(value).is_integer():
        return _BOUNDS[int(value)]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


Link = Callable[[str], str]


def schema_type(schema: dict[str, Any], link: Link) -> str:
    """A JSON schema as a short Markdown phrase: ``integer 1..2³¹−1``, ``list of [Job](#...)``,
    ``mapping string → number``, ``"pull" or "push"``; ``link`` turns a component name into a link."""
    if "$ref" in schema:
        return link(schema["$ref"].rsplit("/", 1)[-1])
    if "anyOf" in schema and "type" not in schema:
        branches = schema["anyOf"]
        words = [schema_type(branch, link) for branch in branches if branch.get("type") != "null"]
        if len(words) < len(branches):
            words.append("null")
        return " or ".join(words)
    if "enum" in schema:
        return " or ".join("null" if v is None else code(_json(v)) for v in schema["enum"])
    if "const" in schema:
        return code(_json(schema["const"]))
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(schema_type({**schema, "type": k}, link) for k in kind)
    if kind == "array":
        items = schema_type(schema.get("items", {}), link) if schema.get("items") else "anything"
        return _joined(f"list of {items}", _size(schema, "minItems", "maxItems", "item"))
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            keys = schema_type({"type": "string", **schema.get("propertyNames", {})}, link)
            return _joined(
                f"mapping {keys} → {schema_type(values, link)}",
                _size(schema, "minProperties", "maxProperties", "entry"),
            )
        return "object"
    if kind in ("integer", "number"):
        return _joined(kind, _range(schema))
    if kind == "string":
        words = [_size(schema, "minLength", "maxLength", "character")]
        if schema.get("format") == "date-time":
            words.append("ISO-8601 time")
        if schema.get("contentEncoding") == "base64":
            words.append("base64")
        pattern = schema.get("pattern")
        if pattern == r"\S":
            words.append("not blank")
        elif pattern and len(pattern) <= _LONG_PATTERN:
            words.append(f"matching {code(pattern)}")
        return _joined("string", ", ".join(w for w in words if w))
    if kind in ("boolean", "null"):
        return kind
    return "anything"


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _joined(kind: str, detail: str) -> str:
    return f"{kind} ({detail})" if detail else kind


def _range(schema: dict[str, Any]) -> str:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    low_open, high_open = "exclusiveMinimum" in schema, "exclusiveMaximum" in schema
    if low is not None and high is not None and not low_open and not high_open:
        return f"{number(low)}–{number(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '≥'} {number(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '≤'} {number(high)}")
    return ", ".join(parts)


def _size(schema: dict[str, Any], low_key: str, high_key: str, noun: str) -> str:
    low, high = schema.get(low_key), schema.get(high_key)
    if low is None and high is None:
        return ""
    if low == high:
        return f"exactly {low} {noun}{'s' if low != 1 else ''}"
    if high is None:
        return f"at least {low} {noun}{'s' if low != 1 else ''}"
    if not low:
        return f"at most {high} {noun}s"
    return f"{low}–{high} {noun}s"
