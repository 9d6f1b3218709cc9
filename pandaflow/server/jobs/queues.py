"""Queue descriptions: loaded from JSON, validated once, with errors naming file and key.

A queue description file looks like::

    {"queues": [
        {"name": "local", "site": "local", "min_memory_mb": 0, "max_memory_mb": 16000,
         "cores": 8, "max_walltime_s": 86400, "status": "online", "mode": "pull",
         "brokerage": true}
    ]}

Keys (``name`` is required, the rest have the defaults shown in :class:`Queue`):

``name``            unique queue name
``site``            the site the queue belongs to
``min_memory_mb``   jobs must ask for more than this (0: any job up to the maximum)
``max_memory_mb``   jobs may ask for at most this
``cores``           the most cores one job may ask for
``max_walltime_s``  the longest walltime one job may ask for (0: unlimited)
``status``          ``online`` (takes new jobs) or ``offline``
``mode``            ``pull`` (pilots ask for jobs) or ``push`` (the harvester reserves jobs for
                    each worker it submits, :mod:`pandaflow.server.dispatch.push`)
``brokerage``       ``true``: the broker may send jobs here; ``false``: only jobs naming it
``memory_multiplier`` a job killed for exceeding its memory is retried asking this many times
                    as much (capped by the job's ``memory_max_mb``, else by the largest queue
                    of its site) and re-brokered; 1 turns escalation off (default 2). A job's
                    own ``memory_multiplier`` wins over the queue's.
``description``     free text

Keys for the harvester, which keeps pilots alive on queues that name a ``provider`` (see
``docs/queues.md`` for the whole picture; defaults in :data:`HARVESTER_KEYS`):

``provider``            ``{"name": "slurm", ...}``: the provider that starts pilot workers and
                        its constructor arguments (:mod:`pandaflow.providers`); no provider: the
                        harvester leaves the queue alone
``min_workers``         workers kept alive even with no work (default 0)
``max_workers``         most workers alive at once, queued or running (default 1)
``max_queued_workers``  most workers waiting in the batch system (default: ``max_workers``)
``max_new_workers``     most workers submitted in one harvester cycle (default 5)
``submit_per_minute``   most workers submitted in any 60 s, across harvester restarts (0: no limit)
``worker_cores``        job slots of one pilot (default: ``cores``)
``worker_memory_mb``    memory one pilot offers and asks the provider for (default:
                        ``max_memory_mb``)
``worker_idle_s``       idle pilots (and workers still queued while the queue has no work) are
                        cancelled after this long, down to ``min_workers`` (0: never; default 300)
``arrival_timeout_s``   a worker running this long without its pilot registering is cancelled
                        and marked missing; workers waiting in a batch queue are not timed out
                        (default 600)
``worker_workdir``      where pilots make their work directories (default: the harvester's)
``share``               informational, not read by the broker (default 1): a workflow's shares
                        over sites come with the workflow (:mod:`pandaflow.server.jobs.sites`)
``preemptible``         its nodes may be taken away (spot/preemptible VMs) (default false)
``batch_queue``         the site's name for the batch queue or partition behind it (free text)

Unknown keys are refused (a typo must not silently change brokerage). Two queues of one site
with brokerage on whose memory ranges overlap are allowed but warned about
(:func:`overlap_warnings`): the broker then picks the tighter one, which is rarely intended.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from pandaflow.server.store import schema as s

log = logging.getLogger(__name__)


class QueueConfigError(ValueError):
    """A queue description is invalid; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    site: str = "local"
    min_memory_mb: int = 0
    max_memory_mb: int = 1_000_000
    cores: int = 1
    max_walltime_s: float = 0
    status: str = "online"
    mode: str = "pull"
    brokerage: bool = True
    memory_multiplier: float = 2.0
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.status == "online"

    def setting(self, key: str) -> Any:
        """A harvester key's value (:data:`HARVESTER_KEYS`), its default when the file omits it."""
        if key in self.extra:
            return self.extra[key]
        spec = HARVESTER_KEYS[key]
        default = spec.default
        if callable(default):
            default = default(self)
        return default

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data

    def refusal(self, memory_mb: int | None, cores: int, walltime_s: float | None) -> str | None:
        """Why this queue cannot hold a job of that shape, or None when it can."""
        mem = memory_mb or 0
        if mem > self.max_memory_mb:
            return f"queue {self.name!r} holds at most {self.max_memory_mb} MB, job asks {mem} MB"
        if self.min_memory_mb and mem <= self.min_memory_mb:
            return f"queue {self.name!r} takes jobs above {self.min_memory_mb} MB, job asks {mem} MB"
        if cores > self.cores:
            return f"queue {self.name!r} gives at most {self.cores} cores, job asks {cores}"
        if self.max_walltime_s and walltime_s and walltime_s > self.max_walltime_s:
            return f"queue {self.name!r} allows {self.max_walltime_s:g} s, job asks {walltime_s:g} s"
        return None


@dataclass(frozen=True, slots=True)
class _Key:
    """A harvester key: its JSON type, smallest value (numbers) and default."""

    kind: type | tuple[type, ...]
    minimum: float | None = None
    default: Any = None


_NUMBER = (int, float)
# Keys the harvester owns; validated here, kept verbatim in ``Queue.extra``.
HARVESTER_KEYS: dict[str, _Key] = {
    "provider": _Key(dict),
    "min_workers": _Key(int, 0, 0),
    "max_workers": _Key(int, 0, 1),
    "max_queued_workers": _Key(int, 0, lambda q: q.setting("max_workers")),
    "max_new_workers": _Key(int, 1, 5),
    "submit_per_minute": _Key(_NUMBER, 0, 0),
    "worker_cores": _Key(int, 1, lambda q: q.cores),
    "worker_memory_mb": _Key(int, 1, lambda q: q.max_memory_mb),
    "worker_idle_s": _Key(_NUMBER, 0, 300),
    "arrival_timeout_s": _Key(_NUMBER, 1, 600),
    "worker_workdir": _Key(str, None, None),
    "share": _Key(_NUMBER, 0, 1),
    "preemptible": _Key(bool, None, False),
    "batch_queue": _Key(str, None, ""),
}
_PASSTHROUGH = set(HARVESTER_KEYS)
_FIELDS = {
    "name": str,
    "site": str,
    "min_memory_mb": int,
    "max_memory_mb": int,
    "cores": int,
    "max_walltime_s": (int, float),
    "status": str,
    "mode": str,
    "brokerage": bool,
    "memory_multiplier": (int, float),
    "description": str,
}
_CHOICES = {"status": ("online", "offline"), "mode": ("pull", "push")}
#: Inclusive bounds of the numeric keys that "not negative" does not say (low, high; None: open).
_BOUNDS: dict[str, tuple[float, float | None]] = {"cores": (1, None), "memory_multiplier": (1, 100)}


def parse_queues(data: Any, source: str = "<queues>") -> list[Queue]:
    """Validate a decoded queue description and return its queues."""
    if isinstance(data, dict) and "queues" in data:
        unknown = set(data) - {"queues", "description"}
        if unknown:
            raise QueueConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected 'queues'")
        data = data["queues"]
    if not isinstance(data, list) or not data:
        raise QueueConfigError(f"{source}: 'queues' must be a non-empty list of queue objects")
    found: list[Queue] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        where = f"{source}: queues[{i}]"
        if not isinstance(entry, dict):
            raise QueueConfigError(f"{where}: expected an object, got {type(entry).__name__}")
        if "name" not in entry:
            raise QueueConfigError(f"{where}: missing required key 'name'")
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in entry.items():
            if key in _PASSTHROUGH:
                extra[key] = _harvester_value(key, value, where)
                continue
            expected = _FIELDS.get(key)
            if expected is None:
                raise QueueConfigError(
                    f"{where}.{key}: unknown key; expected one of {sorted(_FIELDS) + sorted(_PASSTHROUGH)}"
                )
            if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
                want = expected.__name__ if isinstance(expected, type) else "number"
                raise QueueConfigError(f"{where}.{key}: expected {want}, got {value!r}")
            if key in _CHOICES and value not in _CHOICES[key]:
                raise QueueConfigError(f"{where}.{key}: expected one of {_CHOICES[key]}, got {value!r}")
            if expected in (int, (int, float)) and value < 0:
                raise QueueConfigError(f"{where}.{key}: must not be negative, got {value!r}")
            kwargs[key] = value
        if not kwargs["name"]:
            raise QueueConfigError(f"{where}.name: must not be empty")
        if kwargs["name"] in seen:
            raise QueueConfigError(f"{where}.name: duplicate queue name {kwargs['name']!r}")
        seen.add(kwargs["name"])
        queue = Queue(**kwargs, extra=extra)
        if queue.min_memory_mb > queue.max_memory_mb:
            raise QueueConfigError(
                f"{where}: min_memory_mb ({queue.min_memory_mb}) is above "
                f"max_memory_mb ({queue.max_memory_mb})"
            )
        low, _ = _BOUNDS["cores"]
        if queue.cores < low:
            raise QueueConfigError(f"{where}.cores: must be at least {low:g}")
        low, high = _BOUNDS["memory_multiplier"]
        if not low <= queue.memory_multiplier <= high:
            raise QueueConfigError(
                f"{where}.memory_multiplier: must be from {low:g} (no escalation) to {high:g}, "
                f"got {queue.memory_multiplier!r}"
            )
        _check_workers(queue, where)
        found.append(queue)
    for warning in overlap_warnings(found, source):
        log.warning("%s", warning)
    return found


def _harvester_value(key: str, value: Any, where: str) -> Any:
    spec = HARVESTER_KEYS[key]
    if key == "provider":
        from pandaflow.providers import ProviderConfigError, validate

        try:
            validate(value, f"{where}.provider")
        except ProviderConfigError as exc:
            raise QueueConfigError(str(exc)) from None
        return value
    if isinstance(value, bool) and spec.kind is not bool or not isinstance(value, spec.kind):
        want = spec.kind.__name__ if isinstance(spec.kind, type) else "number"
        raise QueueConfigError(f"{where}.{key}: expected {want}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        what = "must not be negative" if spec.minimum == 0 else f"must be at least {spec.minimum:g}"
        raise QueueConfigError(f"{where}.{key}: {what}, got {value!r}")
    return value


def _check_workers(queue: Queue, where: str) -> None:
    """Limits that contradict each other, with the defaults of the keys the file leaves out."""
    low, high = queue.setting("min_workers"), queue.setting("max_workers")
    if low > high:
        raise QueueConfigError(f"{where}: min_workers ({low}) is above max_workers ({high})")
    if queue.setting("max_queued_workers") > high:
        raise QueueConfigError(
            f"{where}.max_queued_workers: {queue.setting('max_queued_workers')} is above max_workers ({high})"
        )
    if queue.setting("worker_cores") < queue.cores:
        raise QueueConfigError(
            f"{where}.worker_cores: {queue.setting('worker_cores')} is below cores ({queue.cores}): "
            "the largest jobs of the queue could never run on its pilots"
        )
    if "provider" not in queue.extra:
        managed = [k for k in ("min_workers", "max_workers") if k in queue.extra]
        if managed:
            raise QueueConfigError(
                f"{where}.{managed[0]}: the queue has no 'provider', so no harvester submits workers "
                "for it; add a provider block or remove the key"
            )


def overlap_warnings(queues: list[Queue], source: str = "<queues>") -> list[str]:
    """Pairs of brokerage-on queues of one site whose memory ranges overlap (each a message)."""
    warnings = []
    candidates = [q for q in queues if q.brokerage]
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            # Ranges are (min, max]: 0-4096 and 4096-8192 touch but do not overlap.
            if a.site == b.site and a.min_memory_mb < b.max_memory_mb and b.min_memory_mb < a.max_memory_mb:
                warnings.append(
                    f"{source}: queues {a.name!r} ({a.min_memory_mb}-{a.max_memory_mb} MB) and {b.name!r} "
                    f"({b.min_memory_mb}-{b.max_memory_mb} MB) of site {a.site!r} both have brokerage on "
                    "and overlapping memory ranges; the broker sends jobs that fit both to the one with "
                    "the smaller maximum. Turn brokerage off on one, or make the ranges disjoint"
                )
    return warnings


def load_queues(path: str | Path) -> list[Queue]:
    """Read and validate a queue description file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise QueueConfigError(f"{path}: cannot read queue description: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QueueConfigError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return parse_queues(data, str(path))


def default_queue_file() -> Path:
    """The shipped description of the single local queue."""
    return Path(__file__).resolve().parents[2] / "configs" / "queues" / "local.json"


def stored_descriptions(conn: Connection) -> tuple[str, ...]:
    """The JSON descriptions of the queues the server serves (its ``queues`` table), by name: what
    a harvester without its own queue file serves."""
    return tuple(conn.execute(select(s.queues.c.description).order_by(s.queues.c.name)).scalars())
