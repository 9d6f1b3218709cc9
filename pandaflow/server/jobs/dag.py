"""Data-aware dependencies: jobs read and write logical data products.

A job names the products it reads (``inputs``) and writes (``outputs``); ``parents`` (names
of jobs in the same submission) are the special case of one pseudo-product per parent. A job
is stored ``pending`` with ``n_unmet`` = inputs not yet available and becomes ``ready`` when
the counter reaches zero. When a job finishes its outputs become available: the counters of
their consumers drop in one indexed update and those at zero are released. When a producer
fails for good (or is cancelled or pruned) its outputs become missing and every consumer
still waiting is pruned, level by level with set-based statements: never a Python walk over
the whole graph, so a million-job workflow stays cheap.

Submission-time checks (all refused as a whole, naming the jobs): duplicate job names, unknown
parents, a product written by two jobs, an input nobody writes that was not declared
available, and cycles.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from pandaflow.server.jobs import states
from pandaflow.server.jobs.states import CANCELLED, FAILED, FINISHED, PENDING, Applied, Effects
from pandaflow.server.store.statements import MAX_PARAMS, Sql, chunks, insert_sql, marks

PENDING_PRODUCT, AVAILABLE, MISSING = "pending", "available", "missing"
_PARENT = "@job:"  # pseudo-product a parent writes for each of its children


def uses_dag(jobs: Iterable[dict[str, Any]]) -> bool:
    return any(j.get("inputs") or j.get("outputs") or j.get("parents") for j in jobs)


def check(
    jobs: list[dict[str, Any]], available: Iterable[str] = (), existing: dict[str, str] | None = None
) -> list[str]:
    """Problems of a submission's graph (empty when it is sound).

    ``available`` are products declared to exist already; ``existing`` maps products the
    workflow already has to their status (from earlier submissions).
    """
    problems: list[str] = []
    existing = existing or {}
    names: dict[str, int] = {}
    for i, job in enumerate(jobs):
        name = job.get("name")
        if not name:
            if uses_dag([job]):
                problems.append(f"jobs[{i}]: a job with inputs, outputs or parents needs a name")
            continue
        if name in names:
            problems.append(f"jobs[{i}] ({name}): duplicate job name (also jobs[{names[name]}])")
        names.setdefault(name, i)
    writer: dict[str, str] = {}
    for job in jobs:
        for parent in job.get("parents") or ():
            if parent not in names:
                problems.append(f"job {job.get('name')!r}: unknown parent {parent!r}")
        for product in job.get("outputs") or ():
            if product in writer and writer[product] != job.get("name"):
                problems.append(
                    f"product {product!r} is written by two jobs: {writer[product]!r} and {job.get('name')!r}"
                )
            elif product in existing:
                problems.append(
                    f"job {job.get('name')!r}: product {product!r} already exists in this workflow"
                )
            writer[product] = job.get("name")
    declared = set(available)
    for product in sorted(declared & set(writer)):
        problems.append(f"product {product!r} is declared available but job {writer[product]!r} writes it")
    for job in jobs:
        for product in job.get("inputs") or ():
            if product not in writer and product not in declared and product not in existing:
                problems.append(
                    f"job {job.get('name')!r}: input {product!r} has no producer; "
                    "add the job that writes it or declare it in 'available'"
                )
    if problems:
        return problems
    cycle = _cycle(jobs, writer)
    if cycle:
        problems.append("the dependencies form a cycle through jobs: " + ", ".join(repr(n) for n in cycle))
    return problems


def _cycle(jobs: list[dict[str, Any]], writer: dict[str, str]) -> list[str]:
    """Jobs left on a cycle after Kahn's algorithm removes everything that can run."""
    children: dict[str, set[str]] = defaultdict(set)
    indegree: dict[str, int] = {j["name"]: 0 for j in jobs if j.get("name")}
    for job in jobs:
        name = job.get("name")
        if not name:
            continue
        parents = set(job.get("parents") or ())
        parents.update(writer[p] for p in job.get("inputs") or () if p in writer)
        for parent in parents:
            if name not in children[parent]:
                children[parent].add(name)
                indegree[name] += 1
    todo = deque(n for n, d in indegree.items() if d == 0)
    while todo:
        for child in children[todo.popleft()]:
            indegree[child] -= 1
            if indegree[child] == 0:
                todo.append(child)
    return sorted(n for n, d in indegree.items() if d > 0)[:20]


def edges(
    job: dict[str, Any], parents: set[str] | frozenset[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """The products a job reads and writes, parents turned into pseudo-products; a job writes
    its pseudo-product only when it is in ``parents`` (named as a parent in the submission), so
    a million-job graph of data products carries no extra rows."""
    inputs = list(
        dict.fromkeys([*(job.get("inputs") or ()), *(_PARENT + p for p in job.get("parents") or ())])
    )
    outputs = list(dict.fromkeys(job.get("outputs") or ()))
    if job.get("name") in parents:
        outputs.append(_PARENT + job["name"])
    return inputs, outputs


def parents_named(jobs: Iterable[dict[str, Any]]) -> set[str]:
    return {p for job in jobs for p in job.get("parents") or ()}


def referenced(jobs: Iterable[dict[str, Any]], available: Iterable[str] = ()) -> set[str]:
    """Every product name a submission reads, writes or declares (parents as pseudo-products)."""
    names = set(available)
    for job in jobs:
        names.update(job.get("inputs") or ())
        names.update(job.get("outputs") or ())
        for parent in job.get("parents") or ():
            names.add(_PARENT + parent)
        if job.get("name"):
            names.add(_PARENT + job["name"])
    return names


def existing_products(
    conn: Connection, workflow_id: int, names: Iterable[str] | None = None
) -> dict[str, tuple[int, str]]:
    """Products the workflow already has: name -> (id, status); with ``names``, only those (a
    piece of a million-job workflow looks up what it mentions, not every product stored so far)."""
    sql = Sql(conn)
    if names is None:
        rows = sql.rows("SELECT name, id, status FROM products WHERE workflow_id=?", (workflow_id,))
        return {name: (pid, status) for name, pid, status in rows}
    if not sql.rows("SELECT 1 FROM products WHERE workflow_id=? LIMIT 1", (workflow_id,)):
        return {}  # a new workflow: nothing to look up
    found: dict[str, tuple[int, str]] = {}
    wanted = sorted(names)
    # PostgreSQL: a completion making one of these available (or missing) waits until this
    # transaction has stored the jobs that read it, then counts them down; or this waits for it
    # and reads the new status. Either way no consumer is left waiting for a product that exists.
    # (SQLite: the caller holds the write lock, see statements.claim_writes.)
    lock = " FOR SHARE" if sql.pg else ""
    for part in chunks(wanted, MAX_PARAMS - 1):
        for name, pid, status in sql.rows(
            f"SELECT name, id, status FROM products WHERE workflow_id=? AND name IN ({marks(len(part))})"
            + lock,
            (workflow_id, *part),
        ):
            found[name] = (pid, status)
    return found


def unmet(
    jobs: list[dict[str, Any]], available: Iterable[str], existing: dict[str, tuple[int, str]]
) -> dict[str, int]:
    """Inputs each job (by uid) still waits for: everything not available already. A job that
    reads a product known to be missing gets -1 (it can never run: stored pruned), unless it
    runs ``always``, which skips missing inputs."""
    ready_now = set(available) | {name for name, (_pid, status) in existing.items() if status == AVAILABLE}
    missing = {name for name, (_pid, status) in existing.items() if status == MISSING}
    named = parents_named(jobs)
    out = {}
    for job in jobs:
        job["_edges"] = edges(job, named)  # kept for store(): computed once per job
        inputs = job["_edges"][0]
        if missing and any(name in missing for name in inputs):
            if not job.get("always"):
                out[job["uid"]] = -1
                continue
            inputs = [name for name in inputs if name not in missing]
        out[job["uid"]] = sum(1 for name in inputs if name not in ready_now)
    return out


def store(
    conn: Connection,
    workflow_id: int,
    jobs: list[tuple[int, dict[str, Any]]],
    available: Iterable[str],
    existing: dict[str, tuple[int, str]],
) -> None:
    """Record the products and input links of stored jobs ``(job_id, job)``."""
    sql = Sql(conn)
    ids = {name: pid for name, (pid, _status) in existing.items()}
    new: list[tuple] = [(workflow_id, name, AVAILABLE, None) for name in sorted(set(available) - set(ids))]
    named = parents_named(job for _id, job in jobs)
    plan = [(job_id, *(job.get("_edges") or edges(job, named))) for job_id, job in jobs]
    for job_id, _inputs, outputs in plan:
        new.extend((workflow_id, name, PENDING_PRODUCT, job_id) for name in outputs if name not in ids)
    cols = ("workflow_id", "name", "status", "producer_id")
    for part in chunks(new, MAX_PARAMS // 4):
        flat = [v for row in part for v in row]
        for pid, name in sql.rows(insert_sql("products", cols, len(part), "id, name"), flat):
            ids[name] = pid
    links = [(job_id, ids[name]) for job_id, inputs, _outputs in plan for name in inputs]
    sql.many(insert_sql("job_inputs", ("job_id", "product_id")), links)


def follow(conn: Connection, applied: Applied, now: float, effects: Effects) -> None:
    """Run the dependency follow-ups of a state change: the outputs of jobs that finished become
    available (releasing their consumers), those of jobs that failed or were cancelled missing
    (pruning theirs)."""
    if not applied.moved:
        return
    if applied.target == FINISHED:
        release(conn, applied.ids, now, effects)
    elif applied.target in (FAILED, CANCELLED):
        verb = "failed" if applied.target == FAILED else "was cancelled"
        prune(conn, applied.ids, now, f"an input can never exist: its producer {verb}", effects)


def release(conn: Connection, finished: list[int], now: float, effects: Effects | None = None) -> list[int]:
    """Outputs of finished jobs become available; consumers with nothing left to wait for become
    ready. Returns the released job ids (their queues go to ``effects``)."""
    sql = Sql(conn)
    # Only products still pending: an 'always' job that runs again must not count its
    # consumers' inputs down twice.
    products = _products_of(sql, finished, PENDING_PRODUCT)
    if not products:
        return []
    _mark(sql, products, "available")
    counts: dict[int, int] = defaultdict(int)
    for part in chunks(products):
        for job_id, n in sql.rows(
            f"SELECT job_id, COUNT(*) FROM job_inputs WHERE product_id IN ({marks(len(part))})"
            " GROUP BY job_id",
            part,
        ):
            counts[job_id] += n
    if not counts:
        return []
    sql.many(
        "UPDATE jobs SET n_unmet = n_unmet - ? WHERE id=?", [(n, job_id) for job_id, n in counts.items()]
    )
    return release_waiting(conn, list(counts), now, effects)


def release_waiting(
    conn: Connection, job_ids: list[int], now: float, effects: Effects | None = None
) -> list[int]:
    """Move the pending jobs among ``job_ids`` whose counter is down to zero to ready.
    Returns the released job ids (their queues go to ``effects``)."""
    sql = Sql(conn)
    lock = " FOR UPDATE" if sql.pg else ""
    released: list[int] = []
    for part in chunks(job_ids):
        rows = sql.maps(
            f"SELECT id, uid, client, status, attempt, queue FROM {sql.by_id('jobs')}"
            f" WHERE id IN ({marks(len(part))}) AND n_unmet <= 0 AND status=?{lock}",
            (*part, PENDING),
        )
        released.extend(states.apply(conn, "release", rows, now, effects=effects).ids)
    return released


def prune(
    conn: Connection, ended: list[int], now: float, why: str, effects: Effects | None = None
) -> list[dict[str, Any]]:
    """Outputs of jobs that ended without finishing become missing; every consumer still waiting
    is pruned, and so on downstream. A consumer that runs ``always`` is not pruned: the missing
    input counts as met, and it is released once nothing else holds it. A held consumer is not
    pruned either: it is when it is released (:func:`pandaflow.server.jobs.control.release`).
    Returns the pruned jobs (id, uid, client); their clients' notifications and the queues of
    released ``always`` jobs go to ``effects``."""
    sql = Sql(conn)
    lock = " FOR UPDATE OF j" if sql.pg else ""
    pruned: list[dict[str, Any]] = []
    frontier = ended
    while frontier:
        products = _products_of(sql, frontier, PENDING_PRODUCT)
        if not products:
            break
        _mark(sql, products, "missing")
        victims: dict[int, dict[str, Any]] = {}
        skipped: dict[int, int] = defaultdict(int)  # 'always' job -> inputs that went missing
        for part in chunks(products):
            for job in sql.maps(
                "SELECT j.id, j.uid, j.client, j.status, j.attempt, j.always FROM jobs j"
                f" JOIN job_inputs i ON i.job_id=j.id WHERE i.product_id IN ({marks(len(part))})"
                f" AND j.status IN ('pending','ready','held'){lock}",
                part,
            ):
                if job["always"]:
                    skipped[job["id"]] += 1
                elif job["status"] != states.HELD:
                    victims[job["id"]] = job
        moved = states.apply(conn, "prune", list(victims.values()), now, error_diag=why, reason=why,
                             effects=effects).moved  # fmt: skip
        if skipped:
            _count_down(sql, skipped, now, effects)
        pruned.extend(moved)
        frontier = [job["id"] for job in moved]
    return pruned


def revive(conn: Connection, retried: list[int], now: float, extra_attempts: int = 1) -> list[int]:
    """Undo what ``retried`` jobs' failure did downstream: their missing outputs are pending
    again, the jobs pruned for them wait again (unless another input is still missing), and so
    on; an ``always`` job that already ran after them runs again. Every job touched, the
    retried ones included, gets its unmet-input counter recounted. Returns the revived jobs
    (the retried ones not included); the caller moves those with nothing to wait for to ready.
    """
    sql = Sql(conn)
    revived: list[int] = []
    frontier = list(retried)
    while frontier:
        products = _products_of(sql, frontier, MISSING)
        if not products:
            break
        _mark(sql, products, "pending")
        candidates: dict[int, dict[str, Any]] = {}
        for part in chunks(products):
            for job in sql.maps(
                "SELECT DISTINCT j.id, j.status, j.attempt, j.always FROM jobs j"
                f" JOIN job_inputs i ON i.job_id=j.id WHERE i.product_id IN ({marks(len(part))})"
                " AND (j.status='pruned' OR (j.always AND j.status IN ('finished','failed')))",
                part,
            ):
                candidates[job["id"]] = job
        # A pruned job with another input still missing (a producer not retried) stays pruned.
        blocked = set()
        ids = [i for i, job in candidates.items() if not job["always"]]
        for part in chunks(ids):
            blocked.update(
                r[0]
                for r in sql.rows(
                    "SELECT DISTINCT i.job_id FROM job_inputs i JOIN products p ON p.id=i.product_id"
                    f" WHERE i.job_id IN ({marks(len(part))}) AND p.status='missing'",
                    part,
                )
            )
        frontier = []
        for event, group in (
            (
                "revive",
                [j for i, j in candidates.items() if i not in blocked and j["status"] == states.PRUNED],
            ),
            (
                "rerun",
                [j for i, j in candidates.items() if i not in blocked and j["status"] != states.PRUNED],
            ),
        ):
            why = "an input it lacked is retried" if event == "revive" else "its inputs are re-run"
            frontier += states.apply(conn, event, group, now, reason=why, extra_attempts=extra_attempts).ids
        revived.extend(frontier)
    # 'always' jobs still waiting counted the inputs that were missing as met: count again.
    waiting_always = []
    if retried:
        for part in chunks(_products_of(sql, retried, PENDING_PRODUCT)):
            waiting_always.extend(
                r[0]
                for r in sql.rows(
                    "SELECT DISTINCT j.id FROM jobs j JOIN job_inputs i ON i.job_id=j.id"
                    f" WHERE i.product_id IN ({marks(len(part))}) AND j.always AND j.status='pending'",
                    part,
                )
            )
    recount(conn, list(dict.fromkeys([*retried, *revived, *waiting_always])))
    return revived


def recount(conn: Connection, job_ids: list[int]) -> None:
    """Set each job's unmet-input counter from its inputs' current state (``always`` jobs do
    not wait for inputs that are missing)."""
    sql = Sql(conn)
    for part in chunks(job_ids):
        sql.run(
            "UPDATE jobs SET n_unmet = (SELECT COUNT(*) FROM job_inputs i JOIN products p ON"
            " p.id=i.product_id WHERE i.job_id=jobs.id AND (p.status='pending'"
            " OR (p.status='missing' AND NOT jobs.always)))"
            f" WHERE id IN ({marks(len(part))})",
            part,
        )


def _count_down(sql: Sql, counts: dict[int, int], now: float, effects: Effects | None) -> None:
    """Lower the counters of ``always`` jobs by inputs that will never exist; release those at
    zero."""
    sql.many("UPDATE jobs SET n_unmet = n_unmet - ? WHERE id=?", [(n, i) for i, n in counts.items()])
    release_waiting(sql.conn, list(counts), now, effects)


def _mark(sql: Sql, products: list[int], status: str) -> None:
    for part in chunks(products):
        sql.run(f"UPDATE products SET status=? WHERE id IN ({marks(len(part))})", (status, *part))


def _products_of(sql: Sql, job_ids: list[int], status: str | None = None) -> list[int]:
    found: list[int] = []
    where = f" AND status='{status}'" if status else ""
    for part in chunks(job_ids):
        found.extend(
            r[0]
            for r in sql.rows(
                f"SELECT id FROM products WHERE producer_id IN ({marks(len(part))}){where}", part
            )
        )
    return found
