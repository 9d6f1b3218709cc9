"""The engine both loops share: it keeps ``parallelism`` evaluations in flight as parsl apps,
feeds each result back to the loop's mathematics as it arrives, applies the failure policy, and
keeps the durable record on the job server.

The record, per trial: its number, parameters, batch (``iteration``), state, value, error and
attempts. A trial is recorded with its parameters *before* its job is submitted, in the same
request that records the outcomes that came in since the last one (one round trip per wake-up).
Each evaluation is a job whose key (``<loop hash>.t<number>.<attempt>``) is its identity in the
executor's named run. A driver started again with the same loop name therefore:

* reads every ended trial back from the record and gives it to the mathematics (not re-run);
* resubmits each trial still running with the same key: the server answers at once if its job
  finished meanwhile, or re-attaches to the job still queued or running (not run twice);
* asks new trials until the budget is reached.

Nothing is durable when the loaded executor is not a :class:`~pandaflow.executors.PandaExecutor`
(a thread pool, say): the loop runs the same, with its record kept in memory only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from pandaflow.loops import objective as objectives
from pandaflow.loops.errors import LoopInputError, LoopStopped

log = logging.getLogger(__name__)

POLICIES = ("retry", "skip", "stop")
_NAME_MAX = 95  # the default executor's run name is "loop-<name>", at most 100 characters
_GIVE_UP_AFTER = 5  # this many failed trials with none complete stop a loop with budget left


@dataclass
class Trial:
    """One evaluation of a loop (and its retries)."""

    number: int
    params: dict[str, Any]
    iteration: int = 0
    state: str = "running"  # running | complete | failed
    value: float | None = None
    error: str = ""
    attempts: int = 1
    job_uid: str = ""


class Mathematics(Protocol):
    """What a loop's search does: resume from ended trials, propose points, learn from values."""

    def resume(self, trial: Trial) -> None: ...

    def ask(self, number: int, params: dict[str, Any] | None = None) -> dict[str, Any]: ...

    def tell(self, trial: Trial) -> None: ...

    def progress(self, trial: Trial) -> str: ...

    def summary(self) -> dict[str, Any]: ...


def check_name(name: str) -> str:
    from pandaflow.executors.keys import RUN_NAME

    if not isinstance(name, str) or not RUN_NAME.match(name) or len(name) > _NAME_MAX:
        raise LoopInputError(
            f"name {name!r}: a loop name is 1-{_NAME_MAX} letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (the same name resumes the loop)"
        )
    return name


def default_name(kind: str, objective: Any, config: dict[str, Any]) -> str:
    """A name that is the same when the same script runs again (so a rerun resumes)."""
    import json

    base = objective.split()[0] if isinstance(objective, str) else getattr(objective, "__name__", kind)
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in os.path.basename(base)).strip("-._")
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{(base or kind)[:60]}-{digest}"


def check_options(budget: int, parallelism: int, on_failure: str, max_retries: int, what: str) -> None:
    for label, value, low in (
        (what, budget, 1),
        ("parallelism", parallelism, 1),
        ("max_retries", max_retries, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LoopInputError(f"{label}={value!r}: give a whole number >= {low}")
    if on_failure not in POLICIES:
        raise LoopInputError(f"on_failure={on_failure!r}: give one of {', '.join(POLICIES)}")


# ---------------------------------------------------------------- where the record lives


class _MemoryRecord:
    """No record: a loop on an executor without a server keeps its trials in the driver only."""

    def open(self, **loop: Any) -> list[dict[str, Any]]:
        return []

    def record(self, trials: list[dict[str, Any]]) -> None:
        pass

    def end(self, status: str, message: str, summary: dict[str, Any]) -> None:
        pass


class _ServerRecord:
    """The record of a loop on the job server of a :class:`~pandaflow.executors.PandaExecutor`."""

    def __init__(self, url: str, token: str, name: str):
        from pandaflow.client import Client

        self.client, self.name = Client(url, token), name

    def open(self, **loop: Any) -> list[dict[str, Any]]:
        from pandaflow.client import ClientError

        self.client.discover_zmq(wait=60)  # an embedded server may still be starting
        try:
            self.client.open_loop(self.name, **loop)
        except ClientError as exc:
            if exc.status in (400, 409):
                raise LoopInputError(str(exc)) from None
            raise
        trials, offset = [], 0
        while True:
            page = self.client.list_trials(self.name, limit=1000, offset=offset)
            trials += page["trials"]
            offset += len(page["trials"])
            if not page["trials"] or offset >= page["total"]:
                return trials

    def record(self, trials: list[dict[str, Any]]) -> None:
        if trials:
            self.client.record_trials(self.name, trials)

    def end(self, status: str, message: str, summary: dict[str, Any]) -> None:
        self.client.end_loop(self.name, status, message[:20000], summary)


class _Pipeline:
    """Records and submissions in order, off the driver's thread: each batch of records is sent
    (one request), then the jobs of the trials it asked for are submitted, so a trial is durable
    before its job exists while the driver goes on asking. A failed request stops the loop: it is
    raised in the driver's thread at its next step, and the trials it held never get a job."""

    def __init__(self, record: Any, submit: Callable[[Trial], Future]):
        self._record, self._submit = record, submit
        self._queue: queue.SimpleQueue[tuple[list[dict[str, Any]], list[tuple[Trial, Future]]] | None] = (
            queue.SimpleQueue()
        )
        self._idle = threading.Event()
        self._idle.set()
        self._busy = 0
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pandaflow-loop-record", daemon=True)
        self._thread.start()

    def send(self, records: list[dict[str, Any]], trials: list[Trial]) -> list[Future]:
        """Queue ``records``, then the submission of ``trials``; their futures, at once."""
        self.check()
        slots = [(t, Future()) for t in trials]
        if records or slots:
            with self._lock:
                self._busy += 1
                self._idle.clear()
            self._queue.put((list(records), slots))
        return [f for _, f in slots]

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def flush(self) -> None:
        """Wait until everything queued is sent (and raise what failed)."""
        self._idle.wait()
        self.check()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch = [item]
            while not self._queue.empty():  # one request for all that is waiting
                more = self._queue.get()
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            records = [r for b, _ in batch for r in b]
            slots = [s for _, ss in batch for s in ss]
            try:
                if self.error is None:
                    self._record.record(records)
                    for trial, slot in slots:
                        _chain(self._submit(trial), slot)
                else:
                    raise self.error
            except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
                self.error = self.error or exc
                for _, slot in slots:
                    if not slot.done():
                        slot.set_exception(exc)
            finally:
                with self._lock:
                    self._busy -= len(batch)
                    if not self._busy:
                        self._idle.set()


def _chain(source: Future, target: Future) -> None:
    def copy(done: Future) -> None:
        error = done.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


# ---------------------------------------------------------------- the executor


@dataclass
class _Place:
    label: str
    executor: Any
    panda: bool
    owned: Any = None  # the DataFlowKernel this loop loaded (cleaned up at the end), if any


def _place(name: str, executor: str | None) -> _Place:
    import parsl
    from parsl.errors import NoDataFlowKernelError

    from pandaflow.executors import PandaExecutor

    try:
        dfk = parsl.dfk()
    except NoDataFlowKernelError:
        dfk = None
    owned = None
    if dfk is None:
        from parsl.config import Config

        run_dir = os.path.join(os.getcwd(), "runinfo")
        dfk = owned = parsl.load(
            Config(
                executors=[PandaExecutor(label="loops", run_name=f"loop-{name}")],
                run_dir=run_dir,
                strategy="none",
            )
        )
        # parsl logs every task at DEBUG into parsl.log, some 3 ms per evaluation in the driver:
        # the loop's own config keeps warnings only (progress and outcomes are in the record).
        logging.getLogger("parsl").setLevel(logging.WARNING)
    choices = {label: ex for label, ex in dfk.executors.items() if label != "_parsl_internal"}
    if executor is not None:
        if executor not in choices:
            raise LoopInputError(f"executor={executor!r}: the loaded parsl config has {sorted(choices)}")
        label = executor
    else:
        pandas = [label for label, ex in choices.items() if isinstance(ex, PandaExecutor)]
        label = (pandas or list(choices))[0]
    ex = choices[label]
    return _Place(label, ex, isinstance(ex, PandaExecutor), owned)


# ---------------------------------------------------------------- the loop


@dataclass
class Driver:
    kind: str
    name: str
    config: dict[str, Any]
    budget: int
    objective: Any
    parallelism: int
    on_failure: str = "retry"
    max_retries: int = 2
    direction: str = ""
    executor: str | None = None
    resource_specification: dict[str, Any] | None = None
    workdir: str | None = None
    timeout: float | None = None
    verbose: bool = True
    trials: dict[int, Trial] = field(default_factory=dict)

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[{self.name}] {text}", file=sys.stdout, flush=True)

    def run(self, math: Mathematics) -> list[Trial]:
        """Run the loop to its budget; the trials by number."""
        kind = objectives.check(self.objective)
        place = _place(self.name, self.executor)
        try:
            return self._run(math, kind, place)
        finally:
            if place.owned is not None:
                import parsl

                place.owned.cleanup()
                parsl.clear()

    def _run(self, math: Mathematics, kind: str, place: _Place) -> list[Trial]:
        from parsl import python_app

        ex = place.executor
        if place.panda:
            record: Any = _ServerRecord(ex.server_url, ex.token, self.name)
            if not ex.run_name and ex.server_url and getattr(ex, "_embedded", False):
                self._say(
                    f"executor {place.label!r} has no run_name: its embedded server keeps this run's "
                    "database in the run directory, so a restarted driver starts the loop afresh; give "
                    "PandaExecutor(run_name=...) to resume it"
                )
            elif not ex.run_name:
                self._say(
                    f"executor {place.label!r} has no run_name: a restarted driver will run the trials "
                    "that were in flight again (ended ones are still read back)"
                )
        else:
            record = _MemoryRecord()
            self._say(
                f"executor {place.label!r} is not a PandaExecutor: this loop is not recorded (no resume)"
            )
        recorded = record.open(
            kind=self.kind,
            config=self.config,
            budget=self.budget,
            direction=self.direction,
            workflow=f"loop {self.name}",
            owner=os.environ.get("USER", ""),
        )
        self._prefix = hashlib.sha256(self.name.encode()).hexdigest()[:8]
        self._client = getattr(ex, "client_id", "")
        target = objectives.run_command if kind == "command" else objectives.call_function
        self._app = python_app(target, executors=[place.label])
        self._panda = place.panda
        self._workdir = self.workdir or os.path.join(os.getcwd(), f"{self.name}.trials")
        inflight: dict[Future, Trial] = {}
        resubmit: list[Trial] = []
        for t in sorted(recorded, key=lambda t: t["number"]):
            trial = Trial(
                t["number"],
                t["params"],
                t["iteration"],
                t["state"],
                t["value"],
                t["error"],
                t["attempts"],
                t["job_uid"] or "",
            )
            self.trials[trial.number] = trial
            if trial.state == "running":
                math.ask(trial.number, trial.params)
                resubmit.append(trial)
            else:
                math.resume(trial)
        if recorded:
            ended = sum(t.state != "running" for t in self.trials.values())
            self._say(f"resuming: {ended} trial(s) ended, {len(resubmit)} in flight, budget {self.budget}")
        self._math, self._record, self._inflight = math, record, inflight
        self._stopped: LoopStopped | None = None
        self._failures_in_a_row = 0
        self._pending: list[dict[str, Any]] = []
        self._pipe = _Pipeline(record, self._submit)
        try:
            for trial in resubmit:  # recorded already, with their keys: the server re-attaches
                inflight[self._submit(trial)] = trial
            while True:
                new = self._ask_more()
                self._send(new)
                if not inflight:
                    break
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                self._pipe.check()
                for fut in done:
                    self._ended(inflight.pop(fut), fut)
                if self._stopped is not None:
                    break  # what is in flight stays recorded as running: a rerun picks it up
            self._send([])
            self._pipe.flush()
        except BaseException:
            try:
                if self._pipe.error is None:
                    self._send([])
                    self._pipe.flush()
            except Exception:  # noqa: BLE001 - the first error is the one to see
                log.exception("could not record the last outcomes of loop %s", self.name)
            raise
        finally:
            self._pipe.close()
        if self._stopped is not None:
            record.end("stopped", str(self._stopped), math.summary())
            raise self._stopped
        record.end("finished", "", math.summary())
        return [self.trials[n] for n in sorted(self.trials)]

    def _send(self, trials: list[Trial]) -> None:
        """Record what is pending, then submit ``trials`` (in the background, in that order)."""
        for trial, fut in zip(trials, self._pipe.send(self._pending, trials), strict=True):
            self._inflight[fut] = trial
        self._pending = []

    def _ask_more(self) -> list[Trial]:
        """New trials to fill ``parallelism`` within the budget, recorded in ``_pending``."""
        ended = sum(t.state != "running" for t in self.trials.values())
        new: list[Trial] = []
        while (
            self._stopped is None
            and len(self._inflight) + len(new) < self.parallelism
            and ended + len(self._inflight) + len(new) < self.budget
        ):
            number = len(self.trials)
            trial = Trial(number, self._math.ask(number), number // self.parallelism)
            trial.job_uid = self._uid(trial)
            self.trials[number] = trial
            new.append(trial)
            self._pending.append(
                {
                    "number": number,
                    "params": trial.params,
                    "iteration": trial.iteration,
                    "state": "running",
                    "attempts": 1,
                    "job_uid": trial.job_uid,
                }
            )
        return new

    def _ended(self, trial: Trial, fut: Future) -> None:
        """One evaluation ended: tell the mathematics, or retry it, or stop, by the policy."""
        error = fut.exception()
        if error is None:
            trial.state, trial.value = "complete", fut.result()  # error: a retried attempt's, kept
            self._failures_in_a_row = 0
            self._math.tell(trial)
            self._pending.append(
                {
                    "number": trial.number,
                    "state": "complete",
                    "value": trial.value,
                    "error": trial.error,
                    "attempts": trial.attempts,
                }
            )
            self._say(self._math.progress(trial))
            return
        trial.error = _reason(error)
        first = _first_line(trial.error)
        if self.on_failure == "retry" and trial.attempts <= self.max_retries and self._stopped is None:
            trial.attempts += 1
            trial.job_uid = self._uid(trial)
            self._pending.append(
                {
                    "number": trial.number,
                    "attempts": trial.attempts,
                    "error": trial.error,
                    "job_uid": trial.job_uid,
                }
            )
            self._say(
                f"trial {trial.number} failed, retrying ({trial.attempts}/{self.max_retries + 1}): {first}"
            )
            self._send([trial])  # the new attempt's key is recorded before its job exists
            return
        trial.state, trial.value = "failed", None
        self._math.tell(trial)
        self._pending.append(
            {"number": trial.number, "state": "failed", "error": trial.error, "attempts": trial.attempts}
        )
        self._say(f"trial {trial.number} failed after {trial.attempts} attempt(s): {first}")
        self._failures_in_a_row += 1
        if self._stopped is not None:
            return
        if self.on_failure == "stop":
            self._stopped = LoopStopped(
                f"loop {self.name!r} stopped (on_failure='stop'): trial {trial.number} {trial.params} "
                f"failed: {trial.error}",
                error,
            )
        elif self.budget > self._failures_in_a_row >= _GIVE_UP_AFTER and not any(
            t.state == "complete" for t in self.trials.values()
        ):
            self._stopped = LoopStopped(
                f"loop {self.name!r} stopped: its first {self._failures_in_a_row} trials all failed; "
                f"the last error: {trial.error}",
                error,
            )

    def _uid(self, trial: Trial) -> str:
        return f"{self._client}-{self._key(trial)}" if self._panda else ""

    def _key(self, trial: Trial) -> str:
        return f"{self._prefix}.t{trial.number}.{trial.attempts}"

    def _submit(self, trial: Trial) -> Future:
        kwargs: dict[str, Any] = {}
        if self._panda:
            spec = dict(self.resource_specification or {})
            spec.update(
                workflow=f"loop {self.name}", task=f"iteration {trial.iteration:04d}", key=self._key(trial)
            )
            kwargs["parsl_resource_specification"] = spec
        if isinstance(self.objective, str):
            where = os.path.join(self._workdir, f"trial-{trial.number:05d}")
            return self._app(self.objective, trial.params, where, self.timeout, **kwargs)
        return self._app(self.objective, trial.params, **kwargs)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else ""
