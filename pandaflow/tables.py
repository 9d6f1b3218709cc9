"""Plain-text tables and readable values for terminal output (the CLI's human mode)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

EMPTY = "-"
ELLIPSIS = "…"


def truncate(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis when longer."""
    text = " ".join(str(text).split())
    if width < 1 or len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS


def when(value: str | None, precise: bool = False) -> str:
    """An ISO-8601 UTC time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` when unset); ``precise`` adds
    milliseconds (a timeline's events are often within one second)."""
    if not value:
        return EMPTY
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    local = moment.astimezone()
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{local.microsecond // 1000:03d}" if precise else text


def duration(seconds: float | None) -> str:
    """Seconds as ``850ms``, ``12.3s``, ``4m05s``, ``2h03m`` or ``3d04h`` (``-`` when unset)."""
    if seconds is None:
        return EMPTY
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def cell(value: Any) -> str:
    """How one value reads in a table: ``-`` for None, ``yes``/``no`` for booleans."""
    if value is None or value == "":
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None and v != ""]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


def table(
    rows: Iterable[Sequence[Any]],
    headers: Sequence[str],
    *,
    max_width: int | dict[str, int] = 40,
    gap: int = 2,
) -> str:
    """Aligned columns under ``headers``; numeric columns are right-aligned.

    ``max_width`` caps every column (an int) or named columns (a dict by header); longer
    cells are cut with an ellipsis so one long diagnostic cannot wreck the layout.
    """
    rows = [list(r) for r in rows]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in headers]
    right = [_numeric(list(col)) for col in columns]
    limits = [max_width.get(h, 0) if isinstance(max_width, dict) else max_width for h in headers]
    text_rows = [[truncate(cell(v), limit) if limit else cell(v) for v, limit in zip(r, limits, strict=True)]
                 for r in rows]  # fmt: skip
    widths = [len(h) for h in headers]
    for r in text_rows:
        widths = [max(w, len(v)) for w, v in zip(widths, r, strict=True)]
    sep = " " * gap

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return sep.join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in text_rows)])


def pairs(items: Iterable[tuple[str, Any]]) -> str:
    """``key: value`` lines with the values aligned (a detail view)."""
    items = list(items)
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{(k + ':').ljust(width + 1)} {cell(v)}" for k, v in items)
