from datetime import datetime

import pytest
from sqlalchemy import update

from pandaflow.errorcodes import ErrorCode
from pandaflow.server.front import queries
from pandaflow.server.jobs.states import ALL_STATES
from pandaflow.server.store import schema as s


@pytest.fixture
def conn(engine, queues):
    with engine.connect() as conn:
        yield conn


def counts(**given: int) -> dict[str, int]:
    return {state: given.get(state, 0) for state in ALL_STATES}


@pytest.mark.parametrize(
    "given, expected",
    [
        ({}, "empty"),
        ({"finished": 3, "ready": 1}, "running"),
        ({"held": 1, "failed": 2}, "running"),
        ({"finished": 3}, "finished"),
        ({"finished": 2, "failed": 1}, "subfinished"),
        ({"finished": 2, "cancelled": 1}, "subfinished"),
        ({"cancelled": 2}, "cancelled"),
        ({"failed": 1, "cancelled": 2}, "failed"),
        ({"pruned": 1, "cancelled": 1}, "failed"),
    ],
)
def test_the_derived_status_of_a_group_of_jobs_follows_the_documented_rule(given, expected):
    assert queries.derived_status(counts(**given)) == expected


def test_times_are_iso_utc_strings_and_durations_seconds(conn, workload):
    [job_id] = workload.submit([{"name": "timed"}])
    workload.dispatch(workload.pilot())
    workload.report(job_id, ok=True)  # the helper reports t0 two seconds before t1
    job = queries.list_jobs(conn)["jobs"][0]
    assert job["created_at"].endswith("Z")
    assert datetime.fromisoformat(job["ended_at"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert job["duration_s"] == pytest.approx(2.0, abs=0.01)


def test_every_state_is_counted_even_when_no_job_is_in_it(conn):
    assert queries.summary(conn)["jobs"] == counts()


def test_the_name_filter_matches_wildcard_characters_literally(conn, workload):
    workload.submit([{"name": "a_b"}, {"name": "axb"}, {"name": "100%"}, {"name": "1000"}])
    assert [j["name"] for j in queries.list_jobs(conn, name="a_b")["jobs"]] == ["a_b"]
    assert [j["name"] for j in queries.list_jobs(conn, name="0%")["jobs"]] == ["100%"]


def test_an_unknown_status_raises_with_the_allowed_states(conn):
    with pytest.raises(ValueError, match="allowed: pending, ready"):
        queries.list_jobs(conn, status=["ready", "bogus"])


@pytest.mark.parametrize("limit, offset", [(0, 0), (1001, 0), (10, -1), (True, 0)])
def test_a_page_outside_the_limits_raises(conn, limit, offset):
    with pytest.raises(ValueError, match="limit|offset"):
        queries.list_jobs(conn, limit=limit, offset=offset)


def test_workflows_are_listed_newest_first(conn, workload):
    for name in ("first", "second", "third"):
        workload.submit([{"name": name}], workflow=name)
    page = queries.list_workflows(conn, limit=2)
    assert [w["name"] for w in page["workflows"]] == ["third", "second"]
    assert page["total"] == 3


def test_an_unknown_workflow_or_job_raises_not_found(conn):
    with pytest.raises(queries.NotFound, match="no workflow 5"):
        queries.get_workflow(conn, 5)
    with pytest.raises(queries.NotFound, match="no job 5"):
        queries.get_job(conn, 5)


def test_a_job_that_never_ran_has_an_empty_log(conn, workload):
    [job_id] = workload.submit([{"name": "waiting"}])
    assert queries.get_log(conn, job_id) == {"job_id": job_id, "attempt": 0, "source": "none", "text": ""}


def test_an_earlier_attempt_without_a_log_does_not_borrow_the_latest_output(conn, workload):
    [job_id] = workload.submit([{"name": "twice"}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    workload.report(job_id, ok=False, error_code=int(ErrorCode.WORKER_DIED))
    workload.dispatch(pilot)
    workload.report(job_id, ok=True, stdout_tail="from attempt two")
    assert queries.get_log(conn, job_id, attempt=1)["source"] == "none"
    assert queries.get_log(conn, job_id)["text"] == "from attempt two"


def test_the_error_summary_counts_retried_attempts_apart_from_jobs(conn, workload):
    [job_id] = workload.submit([{"name": "flaky", "task": "fit"}])
    pilot = workload.pilot()
    for _ in range(3):
        workload.dispatch(pilot)
        workload.report(job_id, ok=False, error_code=int(ErrorCode.WORKER_DIED), error_diag="segfault")
    [group] = queries.error_summary(conn)["errors"]
    assert (group["task"], group["error_name"], group["jobs"], group["attempts"]) == (
        "fit",
        "WORKER_DIED",
        1,
        3,
    )
    assert group["description"] == ErrorCode.WORKER_DIED.description


def test_the_error_summary_can_be_limited_to_one_workflow(conn, workload):
    pilot = workload.pilot()
    for workflow in ("w1", "w2"):
        [job_id] = workload.submit([{"name": workflow}], workflow=workflow)
        workload.dispatch(pilot)
        workload.report(job_id, ok=False, error_code=int(ErrorCode.PAYLOAD_EXCEPTION))
    assert [e["workflow_id"] for e in queries.error_summary(conn, workflow_id=2)["errors"]] == [2]


def test_an_error_code_no_one_defined_is_named_unknown(conn, workload, engine):
    [job_id] = workload.submit([{"name": "odd"}])
    with engine.begin() as write:
        write.execute(update(s.jobs).where(s.jobs.c.id == job_id).values(error_code=4242))
    job = queries.get_job(conn, job_id)
    assert job["error_name"] == "UNKNOWN_4242"
    assert "unknown error code 4242" in job["error_description"]


def test_an_active_pilots_heartbeat_age_is_measured_from_now(conn, workload, engine):
    workload.pilot("p")
    with engine.begin() as write:
        write.execute(update(s.pilots).values(last_heartbeat=1000.0))
    [pilot] = queries.list_pilots(conn, now=1012.5)["pilots"]
    assert pilot["heartbeat_age_s"] == 12.5
    assert pilot["last_heartbeat_at"] == "1970-01-01T00:16:40.000Z"


# ---------------------------------------------------------------- bps report


def test_the_report_maps_every_state_to_its_bps_column(engine, conn, workload):
    ids = workload.submit([{"name": state, "task": "label"} for state in ALL_STATES])
    with engine.begin() as write:
        for job_id, state in zip(ids, ALL_STATES, strict=True):
            write.execute(update(s.jobs).where(s.jobs.c.id == job_id).values(status=state))
    report = queries.report(conn, 1)
    # Reserved (push queues) and dispatched jobs both wait in a batch queue: PENDING.
    expected = dict.fromkeys(queries.BPS_COLUMNS, 1) | {"PENDING": 2, "EXPECTED": len(ALL_STATES)}
    assert report["total"] == expected
    assert report["labels"] == [{"label": "label", "task_id": 1, "counts": expected}]
    assert report["columns"] == ["UNREADY", "READY", "PENDING", "RUNNING", "DELETED", "HELD", "SUCCEEDED",
                                 "FAILED", "PRUNED", "EXPECTED"]  # fmt: skip


def test_the_report_lists_labels_in_submission_order_with_the_total(conn, workload):
    workload.submit(
        [{"name": "a", "task": "isr"}, {"name": "b", "task": "calibrate"}, {"name": "c", "task": "isr"},
         {"name": "d", "task": "merge", "parents": ["b"]}]
    )  # fmt: skip
    report = queries.report(conn, 1)
    assert [(x["label"], x["counts"]["EXPECTED"]) for x in report["labels"]] == [
        ("isr", 2), ("calibrate", 1), ("merge", 1)
    ]  # fmt: skip
    assert report["total"]["READY"] == 3 and report["total"]["UNREADY"] == 1
    assert report["n_jobs"] == 4 and report["status"] == "running" and report["bps_state"] == "RUNNING"


def test_the_report_of_a_finished_workflow_says_succeeded_and_100_percent(conn, workload):
    [job_id] = workload.submit([{"name": "only"}])
    workload.dispatch(workload.pilot())
    workload.report(job_id, ok=True)
    report = queries.report(conn, 1)
    assert report["bps_state"] == "SUCCEEDED" and report["percent_succeeded"] == 100


def test_the_report_of_an_unknown_workflow_raises_not_found(conn):
    with pytest.raises(queries.NotFound, match="no workflow 9"):
        queries.report(conn, 9)
