"""The response structs of the OpenAPI document describe exactly what the queries return: every key
they return is documented, with its type, and every documented key is there."""

import time

import msgspec
import pytest

from pandaflow.errorcodes import ErrorCode
from pandaflow.harvester import workers as w
from pandaflow.server.front import answers, queries
from pandaflow.server.jobs import control, pilots


def described(data, struct) -> bool:
    """``data`` converts into ``struct`` and back unchanged (so no key is missing or undocumented)."""
    return msgspec.to_builtins(msgspec.convert(data, struct)) == data


@pytest.fixture
def busy(engine, workload):
    """Jobs in several states with attempts, logs and memory samples; pilots; a harvester worker."""
    ids = workload.submit([{"name": f"j{i}", "env": {"A": "1"}, "walltime_s": 60} for i in range(4)])
    pilot = workload.pilot()
    workload.dispatch(pilot, n=3)
    workload.report(ids[0], ok=True, log=b"ok\n", memory_samples=[(1.0, 2.0, 3.0)])
    oom = int(ErrorCode.OUT_OF_MEMORY)
    workload.report(ids[1], ok=False, error_code=oom, error_diag="rss", stdout_tail="t")
    now = time.time()
    with engine.begin() as conn:
        control.cancel(conn, now, job_ids=[ids[2]])
        worker = w.create(
            conn, queue="small", harvester="h", provider="local", cores=1, memory_mb=None, now=now
        )
        pilots.register(conn, {"pilot": "p-w", "queue": "small", "cores": 1, "worker_id": worker}, now)
        status = {"cycle_at": now, "ready_jobs": 1, "ready_cores": 1, "idle_slots": 0, "queued_workers": 0,
                  "running_workers": 1, "action": "none", "error": "", "error_at": None}  # fmt: skip
        w.record_queue(conn, "h", "small", status)
    return ids


@pytest.mark.parametrize(
    "query, struct",
    [
        (lambda c, ids: queries.list_workflows(c), answers.WorkflowPage),
        (lambda c, ids: queries.get_workflow(c, 1), answers.WorkflowDetail),
        (lambda c, ids: queries.list_tasks(c), answers.TaskPage),
        (lambda c, ids: queries.report(c, 1), answers.Report),
        (lambda c, ids: queries.list_jobs(c), answers.JobPage),
        (lambda c, ids: queries.get_job(c, ids[0]), answers.JobDetail),
        (lambda c, ids: queries.get_job(c, ids[1]), answers.JobDetail),
        (lambda c, ids: queries.get_job(c, ids[2]), answers.JobDetail),
        (lambda c, ids: queries.get_log(c, ids[0]), answers.Log),
        (lambda c, ids: queries.job_events(c, ids[1]), answers.JobEvents),
        (lambda c, ids: queries.list_pilots(c), answers.PilotPage),
        (lambda c, ids: queries.list_queues(c), answers.QueueList),
        (lambda c, ids: queries.list_workers(c), answers.WorkerPage),
        (lambda c, ids: queries.summary(c), answers.Summary),
        (lambda c, ids: queries.error_summary(c), answers.ErrorSummary),
        (lambda c, ids: {"error_codes": queries.error_codes()}, answers.ErrorCodes),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_each_answer_is_described_by_its_struct(engine, busy, query, struct):
    with engine.connect() as conn:
        assert described(query(conn, busy), struct)


def test_an_undocumented_key_would_be_noticed(engine, busy):
    with engine.connect() as conn:
        page = queries.list_jobs(conn)
    page["jobs"][0]["secret"] = 1
    assert not described(page, answers.JobPage)
