"""Read-only queries over the job database, shared by the REST API and the CLI's ``--db`` mode.

Every function takes a SQLAlchemy :class:`~sqlalchemy.Connection` and returns plain, JSON-ready
dicts and lists: the REST API sends them as they are, so ``pandaflow --db ... --json`` and
``pandaflow --server ... --json`` print the same thing. Conventions:

* times are ISO-8601 UTC strings in keys ending ``_at`` (``None`` when unset), durations are
  seconds (float) in keys ending ``_s``;
* lists are pages ``{"<things>": [...], "total": N, "limit": L, "offset": O}``;
* job counts by state are maps over every state of :data:`~pandaflow.server.jobs.states.ALL_STATES`
  (zeros included, so consumers need no defaults);
* a missing object raises :class:`NotFound`, a bad filter value raises ``ValueError``; both
  messages say what was wrong and what is allowed.

The derived status of a workflow or task (:func:`derived_status`) is computed from the states
of its jobs; it is never stored, so it cannot disagree with them.

Modules: :mod:`.common` (paging, counts, derived statuses, times), :mod:`.workflows` (workflows,
tasks, the bps report), :mod:`.jobs` (jobs, attempts, timelines, logs, errors), :mod:`.fleet`
(pilots, queues, workers, the summary).
"""

from pandaflow.server.front.queries.common import (
    DEFAULT_LIMIT,
    DERIVED_STATES,
    EMPTY,
    MAX_LIMIT,
    PILOT_STATES,
    SUBFINISHED,
    NotFound,
    check_page,
    counts_by,
    derived_status,
    error_codes,
    error_info,
    iso,
    paged,
    seconds_between,
    with_counts,
    zero_counts,
)
from pandaflow.server.front.queries.fleet import (
    harvester_status,
    list_pilots,
    list_queues,
    list_workers,
    summary,
)
from pandaflow.server.front.queries.jobs import (
    JOB_COLUMNS,
    error_summary,
    get_job,
    get_log,
    job_dict,
    job_events,
    known_queue,
    list_jobs,
    parse_statuses,
    sample_list,
)
from pandaflow.server.front.queries.loops import get_loop, list_loops, list_trials, loop_dict, trial_dict
from pandaflow.server.front.queries.workflows import (
    BPS_COLUMNS,
    BPS_RUN_STATES,
    bps_counts,
    get_workflow,
    list_tasks,
    list_workflows,
    report,
    require_workflow,
    site_shares,
    workflow_dict,
)

__all__ = [
    "get_loop",
    "list_loops",
    "list_trials",
    "loop_dict",
    "trial_dict",
    "iso",
    "seconds_between",
    "error_info",
    "error_codes",
    "check_page",
    "paged",
    "zero_counts",
    "derived_status",
    "counts_by",
    "with_counts",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "PILOT_STATES",
    "EMPTY",
    "SUBFINISHED",
    "DERIVED_STATES",
    "NotFound",
    "workflow_dict",
    "site_shares",
    "list_workflows",
    "require_workflow",
    "get_workflow",
    "list_tasks",
    "bps_counts",
    "report",
    "BPS_COLUMNS",
    "BPS_RUN_STATES",
    "job_dict",
    "parse_statuses",
    "known_queue",
    "list_jobs",
    "sample_list",
    "get_job",
    "job_events",
    "get_log",
    "error_summary",
    "JOB_COLUMNS",
    "list_pilots",
    "list_queues",
    "harvester_status",
    "list_workers",
    "summary",
]
