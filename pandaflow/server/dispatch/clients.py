"""The executors (parsl clients) the dispatcher hears, and what happens to the jobs of one that
stops being heard.

Every executor pings every couple of seconds, saying how long its jobs may wait for it
(``grace``) and, for a named run, its run name. The dispatcher keeps the last ping in memory and
writes it to the ``clients`` table at most every :data:`SAVE_EVERY` seconds. Once an executor
has been silent for its grace its unfinished jobs are cancelled ("orphaned"), so a driver that
died does not leave work running for nobody; a rerun of a *named* run keeps the same client id
and, if it comes back after that, its re-sent jobs run again (see
:func:`pandaflow.server.dispatch.dispatcher.Dispatcher._reattach`).

A server that was itself down does not count that time against its clients: at start every
client not yet orphaned is treated as heard at that moment (:meth:`Clients.startup`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Connection, insert, select, update

from pandaflow.server.jobs import control
from pandaflow.server.jobs.states import FINAL_STATES
from pandaflow.server.store import schema as s
from pandaflow.server.store.statements import chunks

log = logging.getLogger(__name__)

SAVE_EVERY = 10.0  # seconds between two writes of one client's last ping
_C = s.clients.c


@dataclass(slots=True)
class Heard:
    last_seen: float
    grace: float
    run: str
    saved_at: float = 0.0  # when last_seen was last written; 0: never
    saved_grace: float = -1.0


@dataclass(slots=True)
class Clients:
    """The last ping of every executor heard since the server started."""

    heard: dict[str, Heard] = field(default_factory=dict)

    def ping(self, client: str, now: float, grace: float, run: str) -> None:
        seen = self.heard.get(client)
        if seen is None:
            self.heard[client] = Heard(now, max(0.0, grace), run)
        else:
            seen.last_seen, seen.grace, seen.run = now, max(0.0, grace), run

    def startup(self, conn: Connection, now: float) -> None:
        """Forgive the time the server was down: clients not orphaned count as heard now."""
        conn.execute(
            update(s.clients).where(_C.orphaned_at.is_(None), _C.last_seen < now).values(last_seen=now)
        )

    def save(self, conn: Connection, now: float) -> None:
        """Write the pings not written for :data:`SAVE_EVERY` seconds (new clients at once)."""
        due = {
            c: h
            for c, h in self.heard.items()
            if h.saved_at == 0.0 or h.grace != h.saved_grace or now - h.saved_at >= SAVE_EVERY
        }
        if not due:
            return
        known = set()
        for part in chunks(list(due)):
            known.update(conn.execute(select(_C.client).where(_C.client.in_(list(part)))).scalars())
        for client, h in due.items():
            row = {"last_seen": h.last_seen, "grace_s": h.grace, "run_name": h.run or None}
            row["orphaned_at"] = None
            if client in known:
                conn.execute(update(s.clients).where(_C.client == client).values(**row))
            else:
                conn.execute(insert(s.clients).values(client=client, first_seen=h.last_seen, **row))
            h.saved_at, h.saved_grace = now, h.grace

    def sweep(self, conn: Connection, now: float) -> control.Changed | None:
        """Cancel the unfinished jobs of every client silent for longer than its grace."""
        self.save(conn, now)
        silent = conn.execute(
            select(_C.client, _C.grace_s, _C.last_seen, _C.run_name).where(
                _C.orphaned_at.is_(None), _C.grace_s > 0, _C.last_seen + _C.grace_s < now
            )
        ).all()
        if not silent:
            return None
        out = control.Changed()
        for client, grace, last_seen, run in silent:
            live = self.heard.get(client)
            if live is not None and now - live.last_seen <= grace:
                continue  # heard since the last write
            last_seen = max(last_seen, live.last_seen) if live is not None else last_seen
            by_client = select(s.workflows.c.id).where(s.workflows.c.client == client)
            workflow_ids = list(conn.execute(by_client).scalars())
            job_ids: list[int] = []
            for part in chunks(workflow_ids):
                job_ids.extend(
                    conn.execute(
                        select(s.jobs.c.id).where(
                            s.jobs.c.workflow_id.in_(list(part)), s.jobs.c.status.not_in(sorted(FINAL_STATES))
                        )
                    ).scalars()
                )
            who = f"run {run!r}" if run else f"executor {client[:12]}"
            why = (
                f"orphaned: the {who} that submitted it was not heard for {now - last_seen:.0f} s "
                f"(its grace is {grace:g} s)"
            )
            if job_ids:
                changed = control.cancel(conn, now, job_ids=job_ids, why=why)
                out.job_ids.extend(changed.job_ids)
                out.effects.merge(changed.effects)
                log.warning("%s: cancelled %d unfinished job(s)", why, len(changed.job_ids))
            conn.execute(update(s.clients).where(_C.client == client).values(orphaned_at=now))
            self.heard.pop(client, None)
        return out
