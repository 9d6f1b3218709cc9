"""Task keys of a named run: what makes a rerun of a script find the tasks it ran before.

A :class:`~pandaflow.executors.PandaExecutor` with a ``run_name`` gives every task a uid made of
the run's client id and a key: by default a hash of the function's identity (module, name and
source code) and of its arguments, plus the number of earlier calls with the same hash in this
run (so calling ``f(1)`` twice makes two tasks, and a rerun calls them in the same order). The
server stores each uid once: a rerun that submits the same uid gets the stored task back.

Arguments are identified as parsl's memoizer does (:func:`parsl.dataflow.memoization.id_for_memo`:
numbers, strings, None, lists, tuples and dicts of them, functions by name); parsl ``File``
objects by their URL. A call with any other argument has no key (:func:`call_key` returns
``None``) and is keyed by its position in the run instead.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from parsl.dataflow.memoization import id_for_memo

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_run_name(name: str) -> str:
    """``name`` if it can name a run (it becomes a directory and part of every uid), else ValueError."""
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ValueError(
            f"run_name {name!r}: use 1-100 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def client_id(run_name: str) -> str:
    """The client id of a named run: the same on every rerun, so results find their way back."""
    return "run-" + hashlib.sha256(run_name.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=1024)
def _function_identity(func: Callable[..., Any]) -> bytes:
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        source = repr(code.co_code if code is not None else func)
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', getattr(func, '__name__', ''))}"
    return pickle.dumps(["function", name, hashlib.sha256(source.encode()).hexdigest()])


def _ident(value: Any) -> bytes:
    if type(value).__name__ == "File" and hasattr(value, "url"):  # parsl.data_provider.files.File
        return pickle.dumps(["File", str(value.url)])
    if isinstance(value, functools.partial):
        return pickle.dumps([_ident(value.func), [_ident(a) for a in value.args], _kwargs_id(value.keywords)])
    if inspect.isfunction(value):
        return _function_identity(value)
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return pickle.dumps([type(value).__name__, [_ident(v) for v in value]])
    if type(value) is dict:
        return _kwargs_id(value)
    return id_for_memo(value)


def _kwargs_id(kwargs: Mapping[str, Any]) -> bytes:
    return pickle.dumps([(id_for_memo(k), _ident(kwargs[k])) for k in sorted(kwargs, key=str)])


def call_key(func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """A 32-hex-digit hash of the call, or ``None`` if an argument cannot be identified.

    The wrappers parsl puts around an app (``functools.wraps`` chains, the bash app's partial
    over ``remote_side_bash_executor``) are looked through, so the key is the user's function's.
    """
    while hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    kwargs = {k: v for k, v in kwargs.items() if k != "parsl_resource_specification"}
    try:
        parts = [_ident(func), _ident(list(args)), _kwargs_id(kwargs)]
    except (ValueError, TypeError, pickle.PicklingError):
        return None
    return hashlib.sha256(b"".join(parts)).hexdigest()[:32]
