"""Memory sampling of payload process trees with psutil.

A payload is a process plus everything it started, so memory is summed over the whole tree.
Processes come and go while a tree is walked; a process that vanishes (or turns into a zombie,
or is not ours to read) between listing and reading simply stops counting.
"""

from __future__ import annotations

import psutil

_MB = 1024.0 * 1024.0
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def children_map() -> dict[int, list[int]]:
    """Return ``parent pid -> [child pids]`` for every process on the host.

    Building it scans /proc once; pass it to :func:`sample_tree` when sampling several trees in
    one go so each tree does not scan /proc again.
    """
    kids: dict[int, list[int]] = {}
    # psutil's own pid -> ppid scan is about 4x cheaper than process_iter(); it is not public
    # API, so fall back to process_iter() where it is missing.
    fast = getattr(psutil._psplatform, "ppid_map", None)
    if fast is not None:
        try:
            for pid, ppid in fast().items():
                kids.setdefault(ppid, []).append(pid)
            return kids
        except Exception:
            kids.clear()
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid is not None:
            kids.setdefault(ppid, []).append(proc.pid)
    return kids


def tree_pids(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Return ``pid`` followed by all its descendants' pids (empty if ``pid`` is gone)."""
    if children is None:
        try:
            return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        except _GONE:
            return []
    pids, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:  # pid reuse during the scan can in principle produce a cycle
            continue
        seen.add(p)
        pids.append(p)
        todo.extend(children.get(p, ()))
    return pids


def sample_tree(
    pid: int, pss: bool = False, children: dict[int, list[int]] | None = None
) -> tuple[float, float, int]:
    """Return ``(rss_mb, pss_mb, nprocs)`` summed over process ``pid`` and all its descendants.

    PSS (proportional set size: shared pages divided among their users) needs a read of
    /proc/<pid>/smaps_rollup per process, which costs more than RSS, so it is only measured with
    ``pss=True``. Where it is not measured or not permitted, the process's RSS stands in for its
    PSS (an upper bound). A vanished root gives ``(0.0, 0.0, 0)``.
    """
    rss = pss_total = 0.0
    count = 0
    for p in tree_pids(pid, children):
        try:
            proc = psutil.Process(p)
            if pss:
                try:
                    info = proc.memory_full_info()
                    p_rss, p_pss = info.rss, getattr(info, "pss", info.rss)
                except psutil.AccessDenied:
                    p_rss = proc.memory_info().rss
                    p_pss = p_rss
            else:
                p_rss = proc.memory_info().rss
                p_pss = p_rss
        except _GONE:
            continue
        rss += p_rss
        pss_total += p_pss
        count += 1
    return rss / _MB, pss_total / _MB, count
