"""What was wrong with a value, in the project's words: the field path, what was expected and what
was given (``jobs[3].cores: expected an integer of at least 1, got 2.5``).

:func:`explain` turns msgspec's ``ValidationError`` (``Expected `int` >= 1 - at `$.jobs[3].cores```)
into such a message, walking the document and its type together to name the value and to say what
the type wants, from the type itself (:func:`describe`: its bounds, lengths and choices) or from
the ``expected`` words a type's ``Meta(extra=...)`` gives. Used for everything
:mod:`pandaflow.spec` defines: REST bodies and query strings, DAG files, resource specifications.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# Bounds this wide (the 32-bit limits of the database's integer columns) are only worth saying when
# a value passes them: "an integer of at least 1", not "from 1 to 2147483647".
_WIDE = 2**31 - 1
_MISSING = object()  # a value the document does not have
_MESSAGE = re.compile(r"(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>.*)`)?", re.S)
_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_NONE_TYPES = (type(None), UnsetType)


def show(value: Any) -> str:
    """A value as a message shows it: short, and in the words of JSON/YAML (true, null)."""
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    return type(value).__name__


def _path(message: str) -> list[str | int]:
    """``["$", "jobs", 3, "cores"]`` from msgspec's ``... - at `$.jobs[3].cores```."""
    found = _MESSAGE.fullmatch(message)
    parts: list[str | int] = ["$"]
    for name, index in _PART.findall((found and found["path"]) or ""):
        parts.append(name if name else (index if index == "..." else int(index)))
    if found and found["key"]:
        parts.append("...")  # a key of the mapping at the path
    return parts


def _unwrap(tp: Any) -> tuple[Any, list[Meta]]:
    """A type without its Annotated layers and None/UNSET alternatives, and its Meta constraints."""
    metas: list[Meta] = []
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *extras = get_args(tp)
            metas.extend(m for m in extras if isinstance(m, Meta))
        elif origin is Union or origin is types.UnionType:
            rest = [t for t in get_args(tp) if t not in _NONE_TYPES]
            if len(rest) != 1:
                return tp, metas
            tp = rest[0]
        else:
            return tp, metas


def key_path(path: str, key: Any) -> str:
    """The path of a mapping's entry: ``env.PATH``, or ``sites['']`` for a key that is not a word."""
    if isinstance(key, str) and re.fullmatch(r"[\w-]+", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _fields(tp: Any) -> dict[str, Any]:
    return {f.encode_name: f.type for f in msgspec.structs.fields(tp)}


def field_type(struct: type[Struct], name: str, *, nullable: bool = True) -> Any:
    """The type of a field of ``struct``; without its ``None`` alternative unless ``nullable``."""
    tp = _fields(struct)[name]
    if nullable:
        return tp
    base = tp
    while get_origin(base) is Annotated:
        base = get_args(base)[0]
    if get_origin(base) is Union or get_origin(base) is types.UnionType:
        rest = [t for t in get_args(base) if t not in _NONE_TYPES]
        if len(rest) == 1:
            return rest[0]
    return tp


def check_value(value: Any, tp: Any, where: str) -> str | None:
    """Why ``value`` does not fit the type ``tp`` (a message naming ``where``), or None."""
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        return explain(exc, value, tp, where)
    return None


def _bad_entry(mapping: dict, tp: Any) -> tuple[Any, Any, Any]:
    """(key, value, type) of the first entry of ``mapping`` that does not fit ``dict[K, V]``."""
    key_type, value_type = get_args(tp) or (str, Any)
    for key, value in mapping.items():
        for item, item_type in ((key, key_type), (value, value_type)):
            try:
                msgspec.convert(item, item_type)
            except msgspec.ValidationError:
                return key, item, item_type
    return "...", _MISSING, value_type


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else f"{x:g}"


def _bound(kind: str, metas: list[Meta], value: Any, wide: bool) -> str:
    low = next((m.ge for m in metas if m.ge is not None), None)
    high = next((m.le for m in metas if m.le is not None), None)
    above = next((m.gt for m in metas if m.gt is not None), None)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if wide and high is not None and high >= _WIDE and not (number and value > high):
        high = None
    if wide and low is not None and low <= -_WIDE - 1 and not (number and value < low):
        low = None
    if above == 0 and low is None and high is None:
        return f"a positive {kind}"
    if low == 0 and high is None:
        return f"a non-negative {kind}"
    if low is not None and high is not None:
        return f"{_article(kind)} {kind} from {_number(low)} to {_number(high)}"
    if low is not None:
        return f"{_article(kind)} {kind} of at least {_number(low)}"
    if above is not None:
        return f"{_article(kind)} {kind} above {_number(above)}"
    if high is not None:
        return f"{_article(kind)} {kind} of at most {_number(high)}"
    return f"{_article(kind)} {kind}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(tp: Any, value: Any = _MISSING) -> str:
    """What a value of type ``tp`` must be, in words (``an integer of at least 1``)."""
    base, metas = _unwrap(tp)
    for meta in metas:
        if meta.extra and "expected" in meta.extra:
            return meta.extra["expected"]
    if base is bool:
        return "true or false"
    if base is int:
        return _bound("integer", metas, value, wide=True)
    if base is float:
        return _bound("number", metas, value, wide=False)
    if base is str:
        low = next((m.min_length for m in metas if m.min_length), 0)
        high = next((m.max_length for m in metas if m.max_length is not None), None)
        text = "a non-empty string" if low else "a string"
        return text + (f" of at most {high} characters" if high is not None else "")
    if base is bytes:
        return "base64 text"
    if get_origin(base) is Literal:
        return "one of " + ", ".join(map(repr, get_args(base)))
    if get_origin(base) is list:
        low = next((m.min_length for m in metas if m.min_length), 0)
        return "a non-empty list" if low else "a list"
    if get_origin(base) is dict or base is dict:
        return "a mapping"
    if isinstance(base, type) and issubclass(base, Struct):
        return "an object"
    return getattr(base, "__name__", str(base))


def _choices_problem(label: str, metas: list[Meta], value: Any) -> str | None:
    extra = next((m.extra for m in metas if m.extra and "choices" in m.extra), None)
    if extra is None or not isinstance(value, str):
        return None
    allowed, noun = extra["choices"], extra["noun"]
    items = value.split(",")
    unknown = [item for item in items if item and item not in allowed]
    listed = ", ".join(allowed)
    if unknown:
        return f"{label}: unknown {noun} {', '.join(map(repr, unknown))}; allowed: {listed}"
    return f"{label}: expected one or more {noun}s separated by commas, got {value!r}; allowed: {listed}"


def explain(
    exc: msgspec.ValidationError,
    doc: Any,
    tp: Any,
    where: str = "",
    *,
    root: str = "the request body",
    prefix: str = "",
) -> str:
    """The project's message for a ``ValidationError`` of ``msgspec.convert(doc, tp)`` or of a JSON
    decode of ``doc`` into ``tp``: ``<prefix><path>: what was wrong; what to do``.

    ``where`` is the path of ``doc`` in a larger document (``jobs[3]``); ``root`` names ``doc``
    itself when the problem is with the whole of it.
    """
    what = _MESSAGE.fullmatch(str(exc))["what"]  # type: ignore[index]
    value, label = doc, where
    for part in _path(str(exc))[1:]:
        base, _ = _unwrap(tp)
        if part == "...":
            key, value, tp = _bad_entry(value if isinstance(value, dict) else {}, base)
            label = key_path(label, key)
        elif isinstance(part, int):
            (tp,) = get_args(base) or (Any,)
            value = value[part] if isinstance(value, list) and part < len(value) else _MISSING
            label = f"{label}[{part}]"
        else:
            tp = _fields(base).get(part, Any) if isinstance(base, type) and issubclass(base, Struct) else Any
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            label = f"{label}.{part}" if label else part
    named = re.search(r"field `(.*)`", what)
    if what.startswith("Object contains unknown field") and named:
        field = named[1]
        base, _ = _unwrap(tp)
        known = ", ".join(_fields(base)) if isinstance(base, type) and issubclass(base, Struct) else ""
        renamed = getattr(base, "_renamed", {}).get(field)  # a struct's {old name: what it is now}
        if renamed:
            return f"{prefix}{label}.{field}: renamed {renamed}; rename the key"
        if not label:
            return f"{root}: unknown field {field!r}; known fields: {known}"
        return f"{prefix}{label}.{field}: unknown field; known fields: {known}"
    if what.startswith("Object missing required field") and named:
        if not label:
            return f"{root}: {named[1]!r} is missing; it is required"
        return f"{prefix}{label}.{named[1]}: missing; it is required"
    at = f"{prefix}{label}" if label else root
    _, metas = _unwrap(tp)
    return _choices_problem(at, metas, value) or f"{at}: expected {describe(tp, value)}, got {show(value)}"


def field_problems(values: Any, struct: type[Struct], where: str = "") -> list[str]:
    """Every field of ``values`` that does not fit ``struct``, one message each (``struct`` must
    have no required fields); ``[]`` when all fit."""
    try:
        msgspec.convert(values, struct)
        return []
    except msgspec.ValidationError as exc:
        if not isinstance(values, dict):
            return [explain(exc, values, struct, where)]
    found = []
    for key, value in values.items():
        try:
            msgspec.convert({key: value}, struct)
        except msgspec.ValidationError as exc:
            found.append(explain(exc, {key: value}, struct, where))
    return found


def present(struct: Struct) -> dict[str, Any]:
    """The fields of ``struct`` that were given (not UNSET), by name."""
    values = {name: getattr(struct, name) for name in struct.__struct_fields__}
    return {name: value for name, value in values.items() if value is not UNSET}
