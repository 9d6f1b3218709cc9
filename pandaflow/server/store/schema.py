"""Database schema: workflows, tasks, jobs (with attempt history), payloads, results, logs,
pilots and queues.

SQLAlchemy Core tables, so the hot path can issue bulk statements without ORM overhead and
Alembic can migrate them. Times are UNIX epoch seconds (float, UTC).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("owner", String(128), nullable=False, default=""),
    Column("client", String(64), nullable=True, index=True),  # executor that submitted it
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Multi-site brokerage (migration 0006): JSON {site: share}, shares summing to 1; None: any site.
    Column("sites", Text, nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("workflow_id", Integer, ForeignKey("workflows.id"), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("workflow_id", "name"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("uid", String(96), nullable=False, unique=True),  # client key: idempotent submission
    Column("workflow_id", Integer, ForeignKey("workflows.id"), nullable=False),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("kind", String(16), nullable=False),  # python | shell
    Column("status", String(16), nullable=False),
    Column("queue", String(128), nullable=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("cores", Integer, nullable=False, default=1),
    Column("memory_mb", Integer, nullable=True),
    Column("disk_mb", Integer, nullable=True),
    Column("walltime_s", Float, nullable=True),
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("attempt", Integer, nullable=False, default=0),  # number of dispatches so far
    Column("pilot_id", Integer, nullable=True),
    Column("client", String(64), nullable=True),
    Column("command", Text, nullable=True),
    Column("env", Text, nullable=True),  # JSON map for shell jobs
    Column("error_code", Integer, nullable=False, default=0),
    Column("error_diag", Text, nullable=False, default=""),
    Column("exit_code", Integer, nullable=True),
    Column("stdout_tail", Text, nullable=False, default=""),
    Column("max_rss_mb", Float, nullable=True),
    Column("max_pss_mb", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("dispatched_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("n_unmet", Integer, nullable=False, default=0, server_default="0"),  # inputs not yet available
    # Memory-aware retries, with ctrl_bps semantics: after an out-of-memory kill the next attempt
    # asks memory_mb * memory_multiplier (at most memory_max_mb) and is re-brokered.
    Column("memory_multiplier", Float, nullable=True),
    Column("memory_max_mb", Integer, nullable=True),
    Column("retry_unless_exit", Text, nullable=True),  # JSON list of exit codes never retried
    # Runs once every input has ended, whatever the outcome: an input that can never exist is
    # skipped rather than pruning the job (bps finalJob with whenRun: ALWAYS; migration 0005).
    Column("always", Boolean, nullable=False, default=False, server_default=false()),
    # Push queues (migration 0006): the harvester worker the job is reserved for (status
    # 'reserved'), kept once its pilot took it; cleared when the reservation is released.
    Column("worker_id", Integer, nullable=True),
    # Dispatch walks this index in order (priority DESC, FIFO) and stops at LIMIT.
    Index("ix_jobs_dispatch", "status", "queue", text("priority DESC"), "id"),
    # Partial: only pushed jobs are in it, so ingest of ordinary jobs never touches it.
    Index(
        "ix_jobs_worker",
        "worker_id",
        "status",
        sqlite_where=text("worker_id IS NOT NULL"),
        postgresql_where=text("worker_id IS NOT NULL"),
    ),
    Index("ix_jobs_pilot", "pilot_id", "status"),
    Index("ix_jobs_workflow", "workflow_id", "status"),
    Index("ix_jobs_task", "task_id", "status"),
)

job_payloads = Table(
    "job_payloads",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("buffer", LargeBinary, nullable=False),
)

job_results = Table(
    "job_results",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("result", LargeBinary, nullable=False),
    Column("is_exception", Boolean, nullable=False, default=False),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("pilot_id", Integer, nullable=True),
    Column("queue", String(128), nullable=True),
    Column("status", String(16), nullable=False),  # dispatched | running | finished | failed
    Column("error_code", Integer, nullable=False, default=0),
    Column("error_diag", Text, nullable=False, default=""),
    Column("exit_code", Integer, nullable=True),
    Column("dispatched_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("max_rss_mb", Float, nullable=True),
    Column("max_pss_mb", Float, nullable=True),
    Column("memory_samples", Text, nullable=True),  # JSON [[t, rss, pss], ...]
    Column("memory_mb", Integer, nullable=True),  # the memory request of this attempt (migration 0007)
    UniqueConstraint("job_id", "attempt"),
)

# The job history (migration 0007): one row per change of a job's state, appended by
# pandaflow.server.jobs.states.apply in the transaction that makes the change. A job's creation is its
# row in ``jobs`` (created_at, and the state it was stored in is the first event's from_status).
job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),  # the attempt the event belongs to
    Column("from_status", String(16), nullable=False),
    Column("to_status", String(16), nullable=False),
    Column("event", String(16), nullable=False),  # a key of states.TRANSITIONS
    Column("at", Float, nullable=False),
    Column("pilot_id", Integer, nullable=True),
    Column("reason", Text, nullable=False, default=""),
    Index("ix_job_events_job", "job_id", "id"),
)

job_logs = Table(
    "job_logs",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("log", LargeBinary, nullable=False),
)

pilots = Table(
    "pilots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(96), nullable=False, unique=True),
    Column("queue", String(128), nullable=False),
    Column("host", String(255), nullable=False, default=""),
    Column("pid", Integer, nullable=True),
    Column("cores", Integer, nullable=False, default=1),
    Column("memory_mb", Integer, nullable=True),
    Column("workdir", Text, nullable=False, default=""),
    Column("status", String(16), nullable=False),  # active | lost | exited
    Column("version", String(32), nullable=False, default=""),
    Column("registered_at", Float, nullable=False),
    Column("last_heartbeat", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("n_done", Integer, nullable=False, default=0),
    Column("n_failed", Integer, nullable=False, default=0),
    Index("ix_pilots_status", "status", "last_heartbeat"),
)

queues = Table(
    "queues",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=False),  # validated JSON description
    Column("updated_at", Float, nullable=False),
)

# ---------------------------------------------------------------- harvester (migration 0002)

# The states of a harvester worker (see pandaflow.harvester.workers, which moves them).
WORKER_STATES = ("submitted", "running", "finished", "failed", "cancelled", "missing")

workers = Table(
    "workers",
    metadata,
    Column("id", Integer, primary_key=True),  # the pilot's --worker-id
    Column("queue", String(128), nullable=False),
    Column("harvester", String(128), nullable=False, default=""),  # the harvester that follows it
    Column("provider", String(32), nullable=False),  # provider name of the queue's block
    Column("provider_job_id", String(128), nullable=True),  # None until the provider accepted it
    Column("provider_data", Text, nullable=True),  # JSON: what a restarted harvester needs to follow it
    # submitted | running | finished | failed | cancelled | missing (see pandaflow.harvester.workers)
    Column("state", String(16), nullable=False),
    Column("batch_state", String(16), nullable=True),  # the provider's last word (parsl JobState name)
    Column("cores", Integer, nullable=False, default=1),
    Column("memory_mb", Integer, nullable=True),
    Column("pilot_id", Integer, ForeignKey("pilots.id"), nullable=True),  # set when its pilot registers
    Column("error", Text, nullable=False, default=""),
    Column("submitted_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Index("ix_workers_queue_state", "queue", "state"),
    Index("ix_workers_queue_submitted", "queue", "submitted_at"),  # submission rate limits
    Index("ix_workers_state_harvester", "state", "harvester"),
    Index("ix_workers_pilot", "pilot_id"),
)

harvester_queues = Table(
    "harvester_queues",
    metadata,
    Column("queue", String(128), primary_key=True),
    Column("harvester", String(128), primary_key=True),
    Column("cycle_at", Float, nullable=False),  # end of the last cycle that looked at the queue
    Column("ready_jobs", Integer, nullable=False, default=0),  # ready jobs the queue's pilots can take
    Column("ready_cores", Integer, nullable=False, default=0),
    Column("unfit_jobs", Integer, nullable=False, default=0),  # ready jobs larger than its pilots
    Column("idle_slots", Integer, nullable=False, default=0),  # free slots of pilots and queued workers
    Column("queued_workers", Integer, nullable=False, default=0),
    Column("running_workers", Integer, nullable=False, default=0),
    Column("action", Text, nullable=False, default=""),  # what the last cycle did, and why
    Column("error", Text, nullable=False, default=""),  # the last provider failure ("" once it works)
    Column("error_at", Float, nullable=True),
)

# Data-aware dependencies (see pandaflow/server/jobs/dag.py). A product is a logical data product
# of a workflow; a job waits for its inputs with an unmet-input counter (jobs.n_unmet), so
# release is an indexed update rather than a graph walk.
products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("workflow_id", Integer, ForeignKey("workflows.id"), nullable=False),
    Column("name", String(512), nullable=False),
    Column("status", String(16), nullable=False),  # pending | available | missing
    Column("producer_id", Integer, nullable=True, index=True),  # the job that writes it
    UniqueConstraint("workflow_id", "name"),
)

job_inputs = Table(
    "job_inputs",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), primary_key=True, index=True),
)

# ---------------------------------------------------------------- executors and loops (migration 0008)

# The executors (parsl clients) the dispatcher has heard, so that the jobs of one that died are not
# run for nobody: after ``grace_s`` without a ping its unfinished jobs are cancelled (see
# pandaflow.server.dispatch.clients). A named run (PandaExecutor(run_name=...)) keeps its client id
# from one run to the next, so a rerun re-attaches to its jobs.
clients = Table(
    "clients",
    metadata,
    Column("client", String(64), primary_key=True),
    Column("run_name", String(128), nullable=True),
    Column("grace_s", Float, nullable=False, default=0.0),  # 0: never orphaned
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("orphaned_at", Float, nullable=True),  # when its jobs were cancelled for want of it
    Index("ix_clients_orphans", "orphaned_at", "last_seen"),
)

# A loop (pandaflow.loops): a hyperparameter search or an active-learning search, driven from a
# script. The driver keeps the mathematics (Optuna, scikit-learn) in memory; the server keeps the
# durable record, from which a restarted driver resumes.
loops = Table(
    "loops",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # hpo | active_learning
    Column("owner", String(128), nullable=False, default=""),
    Column("workflow", String(255), nullable=False),  # the workflow name its evaluations are jobs of
    Column("config", Text, nullable=False),  # JSON: what must match for a resume (space, budget, ...)
    Column("direction", String(16), nullable=False, default="minimize"),  # hpo; "" for active learning
    Column("budget", Integer, nullable=False),  # trials (hpo) or evaluations (active learning)
    Column("status", String(16), nullable=False),  # running | finished | failed | stopped
    Column("message", Text, nullable=False, default=""),  # why it ended (or the last resume)
    Column("summary", Text, nullable=True),  # JSON the driver reports (accuracy, model facts, ...)
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
)

trials = Table(
    "trials",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("loop_id", Integer, ForeignKey("loops.id"), nullable=False),
    Column("number", Integer, nullable=False),  # 0, 1, ... in the order the driver asked them
    Column("iteration", Integer, nullable=False, default=0),  # its batch (the task it is a job of)
    Column("params", Text, nullable=False),  # JSON {name: value}
    Column("state", String(16), nullable=False),  # running | complete | failed
    Column("value", Float, nullable=True),
    Column("error", Text, nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=1),  # evaluations (the loop's own retries)
    Column("job_uid", String(96), nullable=True),  # the job of the latest evaluation
    Column("created_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    UniqueConstraint("loop_id", "number"),
)
