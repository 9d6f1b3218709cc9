"""Multi-site brokerage: a workflow spread over sites by share, or pinned to one site.

Queues belong to sites (the queue key ``site``). A workflow submitted over REST may say where its
jobs run:

* ``"sites": {"FrDF": 0.5, "UKDF": 0.25, "USDF": 0.25}``: shares. They are weights (``2, 1, 1``
  means the same) and are normalised to sum to 1;
* ``"site": "USDF"``: pinned, the same as ``{"USDF": 1}``;
* neither: the broker picks the tightest queue at any site, as without sites.

The policy is stored with the workflow (``workflows.sites``), so jobs appended later
(``POST /workflows/<id>/jobs``) follow it too.

How a job gets its site, deterministically and without any per-job database work:

1. Jobs are grouped by shape (memory, cores, walltime). For each shape the sites of the policy
   that have a queue able to hold it are found once (the others are left out and the remaining
   shares renormalised; a shape no site of the policy can hold refuses the submission, naming
   every site's reason).
2. The n jobs of a shape in one request are apportioned to those sites by systematic sampling:
   the points ``phase, phase + 1, ..., phase + n - 1`` on ``[0, n)``, cut into slices of length
   ``n * share``. Every site gets ``n * share`` rounded down or up (400 jobs at 50/25/25 are
   exactly 200/100/100), and the rounding is unbiased: ``phase`` is a hash of the request
   (workflow name or id, its size, its first job), so the same request is always brokered the
   same way, while many small appended pieces do not all round towards the same site.
3. The jobs are dealt out in smooth weighted round-robin order over those counts (50/25/25 goes
   FrDF, UKDF, USDF, FrDF, ...): any prefix of the request is within about a job of its shares
   too, so the first jobs of a pipeline step do not all land on one site.
4. Inside the site, the broker's usual rule: the online, brokerage-on queue with the tightest
   memory fit (:class:`~pandaflow.server.jobs.broker.Broker`).

A job that names its ``queue`` goes there, provided the queue is at one of the workflow's sites.
The broker's per-shape cache means each distinct shape is brokered once per site, not per job.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from pandaflow.server.jobs.broker import Broker, BrokerageError
from pandaflow.server.store import schema as s

_UNCOUNTED = 100  # jobs apportioned at a time for a shape the request did not announce


class SiteError(ValueError):
    """A workflow's ``sites``/``site`` cannot be used; the message says why and what is allowed."""


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """Where a workflow's jobs go: ``{site: share}``, shares summing to 1, sites in name order."""

    shares: dict[str, float]

    @property
    def pinned(self) -> str | None:
        """The one site of a pinned workflow, else None."""
        return next(iter(self.shares)) if len(self.shares) == 1 else None

    def to_json(self) -> str:
        return json.dumps(self.shares)

    @classmethod
    def from_json(cls, text: str | None) -> SitePolicy | None:
        if not text:
            return None
        return cls(json.loads(text))


def parse(sites: Any, site: Any, known: Iterable[str]) -> SitePolicy | None:
    """Validate a submission's ``sites`` (shares) or ``site`` (pinned); None when neither is given.

    ``known`` are the sites of the server's queues. Raises :class:`SiteError`.
    """
    known = sorted(known)
    listed = ", ".join(known) or "(none)"
    if sites is not None and site is not None:
        raise SiteError(
            "give 'sites' (shares, e.g. {\"FrDF\": 0.5, \"USDF\": 0.5}) or 'site' (pin the workflow to one "
            "site), not both"
        )
    if site is not None:
        if not isinstance(site, str) or not site:
            raise SiteError(f"'site' must be the name of a site; known sites: {listed}")
        if site not in known:
            raise SiteError(f"unknown site {site!r} in 'site'; known sites: {listed}")
        return SitePolicy({site: 1.0})
    if sites is None:
        return None
    if not isinstance(sites, dict) or not sites:
        raise SiteError(
            "'sites' must map site names to shares (positive numbers), e.g. "
            f'{{"FrDF": 0.5, "UKDF": 0.25, "USDF": 0.25}}; known sites: {listed}'
        )
    unknown = sorted(str(name) for name in sites if name not in known)
    if unknown:
        raise SiteError(f"unknown site(s) {', '.join(map(repr, unknown))} in 'sites'; known sites: {listed}")
    bad = [
        name
        for name, share in sites.items()
        if isinstance(share, bool)
        or not isinstance(share, int | float)
        or not math.isfinite(share)
        or share <= 0
    ]
    if bad:
        raise SiteError(
            f"the share of site {bad[0]!r} in 'sites' must be a positive number, got {sites[bad[0]]!r} "
            "(shares are weights: 0.5/0.25/0.25 and 2/1/1 mean the same; leave a site out to give it none)"
        )
    total = float(sum(sites.values()))
    return SitePolicy({name: sites[name] / total for name in sorted(sites)})


def seed(*parts: Any) -> float:
    """A phase in ``[0, 1)`` fixed by ``parts`` (a stable hash: the same request, the same phase)."""
    digest = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def apportion(n: int, shares: Sequence[float], phase: float) -> list[int]:
    """Split ``n`` jobs by ``shares`` (summing to 1): each gets ``n * share`` rounded down or up,
    which way decided by systematic sampling at ``phase`` in ``[0, 1)`` (unbiased over phases)."""
    counts, before, cumulative = [], 0, 0.0
    for i, share in enumerate(shares):
        cumulative += share
        bound = n * cumulative if i < len(shares) - 1 else n  # the last slice ends at n exactly
        upto = max(before, min(n, math.ceil(bound - phase)))  # points phase + k below the bound
        counts.append(upto - before)
        before = upto
    return counts


class _Plan:
    """One job shape in one request: the sites that can hold it (their queues) and how many jobs
    each gets, dealt out in smooth weighted round-robin order (largest credit first)."""

    __slots__ = ("counts", "credit", "queues", "total")

    def __init__(self, queues: list[str], counts: list[int]):
        self.queues = queues
        self.counts = counts
        self.total = sum(counts)
        self.credit = [0] * len(counts)

    def next(self) -> str:
        # After `total` picks every site got exactly its count and the credits are back to zero:
        # a shape with more jobs than announced just goes round again.
        credit = self.credit
        for i, count in enumerate(self.counts):
            credit[i] += count
        best = max(range(len(credit)), key=credit.__getitem__)  # first of equals: site-name order
        credit[best] -= self.total
        return self.queues[best]


def shape(job: Any) -> tuple:
    """A job's shape as :func:`pandaflow.server.jobs.submission.validate` brokers it."""
    if not isinstance(job, dict):
        return ()
    return (job.get("memory_mb"), 1 if job.get("cores") is None else job["cores"], job.get("walltime_s"))


class SiteBroker:
    """A broker for one request of a workflow with a site policy.

    It has the :meth:`choose` of :class:`~pandaflow.server.jobs.broker.Broker` that
    :func:`pandaflow.server.jobs.submission.validate` calls, so submission needs no change to honour
    sites; each job costs a dictionary lookup and a step of round-robin over a few sites. ``jobs``
    are the request's job specs, counted by shape up front so each shape is apportioned exactly.
    """

    def __init__(self, broker: Broker, policy: SitePolicy, jobs: Iterable[Any] = (), phase: float = 0.0):
        self.broker = broker
        self.policy = policy
        self.phase = phase
        self.expected = Counter(
            shape(job) for job in jobs if not (isinstance(job, dict) and job.get("queue"))
        )
        self._plans: dict[tuple, _Plan | BrokerageError] = {}

    @property
    def queues(self) -> dict:
        return self.broker.queues

    def choose(
        self, memory_mb: int | None, cores: int, walltime_s: float | None, queue: str | None = None
    ) -> str:
        """The queue of the next job of this shape, or :class:`BrokerageError` saying why none."""
        if queue is not None:
            name = self.broker.choose(memory_mb, cores, walltime_s, queue)
            at = self.broker.queues[name].site
            if at not in self.policy.shares:
                raise BrokerageError(
                    f"queue {queue!r} is at site {at!r}, which is not among the workflow's sites "
                    f"({', '.join(self.policy.shares)})"
                )
            return name
        key = (memory_mb, cores, walltime_s)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(key)
        if isinstance(plan, BrokerageError):
            raise plan
        return plan.next()

    def _plan(self, key: tuple) -> _Plan | BrokerageError:
        queues, shares, reasons = [], [], []
        for site, share in self.policy.shares.items():
            try:
                queues.append(self.broker.choose(*key, site=site))
                shares.append(share)
            except BrokerageError as exc:
                reasons.append(str(exc))
        if not queues:
            return BrokerageError("; ".join(reasons))
        total = sum(shares)
        n = self.expected.get(key) or _UNCOUNTED
        return _Plan(queues, apportion(n, [x / total for x in shares], self.phase))

    def counts(self, jobs: Iterable[dict[str, Any]]) -> dict[str, int]:
        """Jobs per site of brokered jobs (their ``queue``), every site of the policy included."""
        found = Counter(self.broker.queues[job["queue"]].site for job in jobs)
        return {site: found.get(site, 0) for site in self.policy.shares}


def remember(conn: Connection, workflow_id: int, policy: SitePolicy) -> None:
    """Store the policy with the workflow, for the jobs appended to it later."""
    conn.execute(update(s.workflows).where(s.workflows.c.id == workflow_id).values(sites=policy.to_json()))


def policy_of(conn: Connection, workflow_id: int) -> SitePolicy | None:
    """The policy a workflow was submitted with (None: any site)."""
    text = conn.execute(select(s.workflows.c.sites).where(s.workflows.c.id == workflow_id)).scalar()
    return SitePolicy.from_json(text)
