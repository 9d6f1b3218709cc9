"""What one evaluation runs, where it runs (on a pilot's worker, as the body of a parsl app).

Two kinds of objective:

* a **Python function** of the parameter dict returning a number;
* a **command template** (a string) with ``{params}`` and ``{result}`` placeholders, the contract
  iDDS uses for containerised trainings: the parameters are written as a JSON object to the file
  ``{params}`` names, the command runs under ``bash`` in the trial's own directory, and it must
  write its value to the file ``{result}`` names, as JSON: a number, or an object with a numeric
  ``"value"``. A command that exits non-zero, or writes no result, or one that is not such JSON,
  is a failed evaluation whose error says which and shows the end of the command's output.

Both return a finite float or raise :class:`~pandaflow.loops.errors.EvaluationError`, so a
failed trial keeps a reason a person can act on. The command runs inside a python app (not a
parsl bash app) so that the result file is read and checked where it was written: a pilot on a
remote node needs no file system shared with the driver.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pandaflow.loops.errors import EvaluationError, LoopInputError

PLACEHOLDERS = ("{params}", "{result}")
_TAIL = 1500


def finite(value: Any, what: str) -> float:
    """``value`` as a float if it is a finite real number, else :class:`EvaluationError`."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise EvaluationError(f"{what} gave {value!r} ({type(value).__name__}): return a finite number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EvaluationError(
            f"{what} gave {value!r} ({type(value).__name__}): return a finite number"
        ) from None
    if not math.isfinite(number):
        raise EvaluationError(f"{what} gave {number!r}: return a finite number (not NaN or infinity)")
    return number


def check(objective: Any, what: str = "objective") -> str:
    """``"function"`` or ``"command"``; :class:`LoopInputError` for anything else, before any submission."""
    if isinstance(objective, str):
        missing = [p for p in PLACEHOLDERS if p not in objective]
        if missing:
            raise LoopInputError(
                f"{what} command {objective!r} lacks {' and '.join(missing)}: a command template names "
                "the parameter file with {params} and the result file with {result}, e.g. "
                "'python train.py --params {params} --result {result}'"
            )
        return "command"
    if callable(objective):
        return "function"
    raise LoopInputError(
        f"{what} must be a function of the parameter dict returning a number, or a command template "
        f"with {{params}} and {{result}}; got {type(objective).__name__}"
    )


def call_function(
    objective: Callable[[dict[str, Any]], Any],
    params: Mapping[str, Any],
    parsl_resource_specification: Any = None,
) -> float:
    """Run a Python objective on ``params`` and check its value (the body of a loop's python app)."""
    name = getattr(objective, "__name__", "the objective")
    return finite(objective(dict(params)), f"{name}({dict(params)!r})")


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _TAIL))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def run_command(
    template: str,
    params: Mapping[str, Any],
    trial_dir: str,
    timeout: float | None = None,
    parsl_resource_specification: Any = None,
) -> float:
    """Run a command template for ``params`` in ``trial_dir`` and read its result file (the body
    of a loop's app)."""
    where = Path(trial_dir)
    where.mkdir(parents=True, exist_ok=True)
    params_file, result_file, output = where / "params.json", where / "result.json", where / "output.log"
    result_file.unlink(missing_ok=True)  # a rerun must not read an earlier attempt's result
    params_file.write_text(json.dumps(dict(params), indent=1, sort_keys=True) + "\n")
    command = template.replace("{params}", shlex.quote(str(params_file))).replace(
        "{result}", shlex.quote(str(result_file))
    )
    with open(output, "ab") as log:
        try:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=where,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise EvaluationError(
                f"the command ran longer than {timeout:g} s and was killed; its output ({output}) ends:\n"
                + _tail(output)
            ) from None
    if done.returncode != 0:
        raise EvaluationError(
            f"the command exited with code {done.returncode}; its output ({output}) ends:\n{_tail(output)}"
        )
    if not result_file.exists():
        raise EvaluationError(
            f"the command exited 0 but wrote no result file {result_file}: it must write JSON there, a "
            'number or {"value": number}; its output ends:\n' + _tail(output)
        )
    text = result_file.read_text(errors="replace")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EvaluationError(f"the result file {result_file} is not JSON ({exc}): {text[:200]!r}") from None
    if isinstance(data, dict):
        if "value" not in data:
            raise EvaluationError(
                f'the result file {result_file} holds an object without "value": {text[:200]!r}; '
                'write a number or {"value": number}'
            )
        data = data["value"]
    return finite(data, f"the result file {result_file}")
