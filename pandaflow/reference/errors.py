"""The error-code reference, generated from :mod:`pandaflow.errorcodes` (``ErrorCode``: the value,
name, whether the server retries it, and its description)."""

from __future__ import annotations

from pandaflow import errorcodes
from pandaflow.reference.markdown import code, prose, table


def numbering() -> str:
    """The module docstring's paragraph on how codes are numbered."""
    paragraphs = (errorcodes.__doc__ or "").split("\n\n")
    return next((prose(p) for p in paragraphs if p.lstrip().startswith("Numbering")), "")


def render() -> str:
    """Every error code in code order; ``pandaflow errorcodes`` and ``GET /api/v1/errorcodes`` print
    the same table."""
    rows = [
        (code(int(c)), code(c.name), "yes" if c.retryable else "no", c.description)
        for c in errorcodes.ErrorCode
    ]
    parts = [numbering(), table(["code", "name", "retried by the server", "meaning"], rows)]
    return "\n\n".join(p for p in parts if p) + "\n"
