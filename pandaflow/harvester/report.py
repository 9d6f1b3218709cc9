"""What one harvester cycle saw and did on a queue (:class:`QueueReport`), and how it is said
(``harvester_queues.action``, ``pandaflow workers``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class QueueReport:
    """What one cycle saw and did on a queue."""

    queue: str
    ready_jobs: int = 0
    ready_cores: int = 0
    unfit_jobs: int = 0
    reserved_jobs: int = 0  # push queues: jobs waiting for the worker they are reserved for
    idle_slots: int = 0
    queued_workers: int = 0
    running_workers: int = 0
    submitted: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    reserved_now: int = 0  # jobs reserved for the workers submitted this cycle
    action: str = ""
    errors: list[str] = field(default_factory=list)


def action_text(report: QueueReport) -> str:
    """What was done, then why: ``submitted 2 with 3 jobs reserved: <the decision's reason>``."""
    done = []
    if report.submitted:
        reserved = f" with {report.reserved_now} jobs reserved" if report.reserved_now else ""
        done.append(f"submitted {len(report.submitted)}{reserved}")
    if report.cancelled:
        done.append(f"cancelled {len(report.cancelled)}")
    return (", ".join(done) + ": " if done else "") + report.action


def say(exc: BaseException) -> str:
    """An exception as it goes into a report's errors: ``TypeName: message``."""
    return f"{type(exc).__name__}: {exc}"
