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
``mode``            ``pull`` (pilots ask for jobs) or ``push`` (jobs assigned to workers)
``brokerage``       ``true``: the broker may send jobs here; ``false``: only jobs naming it
``description``     free text
Unknown keys are refused (a typo must not silently change brokerage).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.status == "online"

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


# Keys other components (the harvester's providers) own; kept verbatim in ``extra``.
_PASSTHROUGH = {"provider", "min_workers", "max_workers", "share", "preemptible", "batch_queue"}
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
    "description": str,
}
_CHOICES = {"status": ("online", "offline"), "mode": ("pull", "push")}


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
                extra[key] = value
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
        if queue.cores < 1:
            raise QueueConfigError(f"{where}.cores: must be at least 1")
        found.append(queue)
    return found


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
    return Path(__file__).resolve().parent.parent / "configs" / "queues" / "local.json"
