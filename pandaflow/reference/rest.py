"""The REST reference, generated from the OpenAPI document the server serves.

:func:`render` reads :func:`pandaflow.server.front.openapi.document` (the very function behind
``GET /api/v1/openapi.json``) and writes every route (method, path, summary, parameters, request
body, responses) and every schema as Markdown tables, the schemas linked wherever they are used.
"""

from __future__ import annotations

from typing import Any

from pandaflow.reference.markdown import anchor, cell, code, prose, schema_type, table

REF_PREFIX = "#/components/"


def schema_anchor(name: str) -> str:
    """The heading id of a schema's section."""
    return anchor("schema", name)


def operation_anchor(method: str, path: str) -> str:
    """The heading id of one route's section (``get-jobs-job-id`` for ``GET /jobs/{job_id}``)."""
    return anchor(method, path)


def link(name: str) -> str:
    """A link to a schema's section."""
    return f"[{name}](#{schema_anchor(name)})"


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, path, operation)`` of every route, in the document's order."""
    return [(method, path, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def render(document: dict[str, Any] | None = None) -> str:
    """The whole reference: authentication, an index of the routes, one section per route (grouped
    by tag), then the schemas. ``document`` defaults to the one the server serves."""
    if document is None:
        from pandaflow.server.front.openapi import document as served

        document = served()
    parts = [_preamble(document), _index(document)]
    tags = [t["name"] for t in document.get("tags", [])]
    ops = operations(document)
    for tag in tags + sorted({t for _, _, op in ops for t in op.get("tags", [])} - set(tags)):
        mine = [(m, p, op) for m, p, op in ops if (op.get("tags") or [""])[0] == tag]
        if mine:
            parts.append(f"## {tag.capitalize()} {{#{anchor('tag', tag)}}}")
            parts += [_operation(document, m, p, op) for m, p, op in mine]
    untagged = [(m, p, op) for m, p, op in ops if not op.get("tags")]
    if untagged:
        parts.append("## Other routes")
        parts += [_operation(document, m, p, op) for m, p, op in untagged]
    parts.append(_schemas(document))
    return "\n\n".join(parts) + "\n"


def _preamble(document: dict[str, Any]) -> str:
    info = document.get("info", {})
    base = (document.get("servers") or [{"url": ""}])[0]["url"]
    lines = [
        f"OpenAPI {document.get('openapi', '')}, {info.get('title', '')} {info.get('version', '')}; "
        f"every path below is under {code(base)}.",
        "",
        prose(info.get("description", "")),
    ]
    schemes = document.get("components", {}).get("securitySchemes", {})
    for name, scheme in schemes.items():
        if scheme.get("type") == "http" and scheme.get("scheme") == "bearer":
            lines += [
                "",
                f"Every request needs {code('Authorization: Bearer <token>')}: "
                f"{prose(scheme.get('description', name))}.",
            ]
    return "\n".join(lines)


def _index(document: dict[str, Any]) -> str:
    rows = [
        (f"[{code(method.upper() + ' ' + path)}](#{operation_anchor(method, path)})", op.get("summary", ""))
        for method, path, op in operations(document)
    ]
    return "## Routes\n\n" + table(["route", "what"], rows)


def _operation(document: dict[str, Any], method: str, path: str, op: dict[str, Any]) -> str:
    parts = [
        f"### {method.upper()} {path} {{#{operation_anchor(method, path)}}}",
        prose(op.get("summary", "")),
    ]
    if op.get("description"):
        parts.append(prose(op["description"]))
    if op.get("operationId"):
        parts.append(f"Operation id: {code(op['operationId'])}.")
    params = op.get("parameters", [])
    if params:
        rows = [
            (
                code(p["name"]),
                p["in"],
                schema_type(p.get("schema", {}), link),
                "yes" if p.get("required") else "no",
                _default(p.get("schema", {})),
                p.get("description", ""),
            )
            for p in params
        ]
        parts.append(
            "**Parameters**\n\n" + table(["name", "in", "type", "required", "default", "meaning"], rows)
        )
    body = op.get("requestBody")
    if body:
        media = ", ".join(
            f"{code(kind)} {schema_type(content.get('schema', {}), link)}"
            for kind, content in body.get("content", {}).items()
        )
        need = "required" if body.get("required") else "optional"
        parts.append(f"**Request body** ({need}): {media}")
    rows = [_response(document, status, answer) for status, answer in op.get("responses", {}).items()]
    parts.append("**Responses**\n\n" + table(["status", "meaning", "body"], rows))
    return "\n\n".join(parts)


def _resolve(document: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    ref = value.get("$ref")
    if not ref:
        return value
    if not ref.startswith(REF_PREFIX):
        raise ValueError(f"cannot follow reference {ref!r}: only {REF_PREFIX}... references are supported")
    kind, name = ref.removeprefix(REF_PREFIX).split("/", 1)
    return document["components"][kind][name]


def _response(document: dict[str, Any], status: str, answer: dict[str, Any]) -> tuple[str, str, str]:
    answer = _resolve(document, answer)
    about = answer.get("description", "")
    headers = answer.get("headers", {})
    if headers:
        shown = ", ".join(f"{code(h)} ({schema_type(v.get('schema', {}), link)})" for h, v in headers.items())
        about = f"{about}; headers {shown}"
    content = answer.get("content", {})
    if len(content) == 1:
        body = schema_type(next(iter(content.values())).get("schema", {}), link)
    else:
        body = "; ".join(f"{code(k)}: {schema_type(v.get('schema', {}), link)}" for k, v in content.items())
    return code(status), about, body or "none"


def _default(schema: dict[str, Any]) -> str:
    if "default" not in schema:
        return ""
    import json

    return code(json.dumps(schema["default"]))


def _schemas(document: dict[str, Any]) -> str:
    schemas = document.get("components", {}).get("schemas", {})
    parts = [
        "## Schemas",
        table(
            ["schema", "what"],
            [
                (link(name), (schema.get("description") or "").split("\n\n")[0])
                for name, schema in schemas.items()
            ],
        ),
    ]
    for name, schema in schemas.items():
        parts.append(_schema(name, schema))
    return "\n\n".join(parts)


def _schema(name: str, schema: dict[str, Any]) -> str:
    parts = [f"### {name} {{#{schema_anchor(name)}}}"]
    if schema.get("description"):
        parts.append(prose(schema["description"]))
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    if props:
        rows = [
            (
                code(field),
                schema_type(value, link),
                "yes" if field in required else "no",
                _default(value),
                value.get("description", ""),
            )
            for field, value in props.items()
        ]
        parts.append(table(["field", "type", "required", "default", "meaning"], rows))
    elif schema.get("type") != "object":
        parts.append(f"Type: {schema_type(schema, link)}.")
    rules = [_alternative(branch) for branch in schema.get("anyOf", ())]
    if rules and props:
        parts.append("Besides the types above, one of these must hold: " + "; or ".join(rules) + ".")
    if schema.get("additionalProperties") is False:
        parts.append("Any other field is refused.")
    return "\n\n".join(parts)


def _alternative(branch: dict[str, Any]) -> str:
    """One branch of an object-level ``anyOf`` (the rules a field's type cannot say) in words."""
    words = [f"{code(field)} is given" for field in branch.get("required", ())]
    for field, rule in branch.get("properties", {}).items():
        if rule is False:
            words.append(f"no {code(field)}")
        elif "enum" in rule:
            words.append(f"{code(field)} is " + schema_type(rule, link) + " (or left out)")
    return cell(", ".join(words) or "anything")
