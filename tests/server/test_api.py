import base64
import re

import pytest
from sqlalchemy import func, select

from pandaflow.errorcodes import ErrorCode
from pandaflow.server.front import queries
from pandaflow.server.store import schema as s

PREFIX = "/api/v1"


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def api_rules(app):
    return [r for r in app.url_map.iter_rules() if r.endpoint.startswith("api.")]


def concrete(rule) -> str:
    return re.sub(r"<(?:\w+:)?\w+>", "1", rule.rule)


def shell(name: str, **fields) -> dict:
    return {"name": name, "command": f"echo {name}", **fields}


# ---------------------------------------------------------------- authentication


def test_every_route_requires_the_bearer_token(app):
    client = app.test_client()
    for rule in api_rules(app):
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            reply = client.open(concrete(rule), method=method)
            assert reply.status_code == 401, (method, rule.rule)
            assert "Bearer" in reply.get_json()["error"]


def test_a_wrong_token_is_refused(app):
    reply = app.test_client().get(f"{PREFIX}/summary", headers={"Authorization": "Bearer wrong"})
    assert reply.status_code == 401


# ---------------------------------------------------------------- submission


def test_bulk_submit_stores_every_job_and_returns_their_ids(api, engine, dispatcher):
    reply = api.post(f"{PREFIX}/workflows", json={"name": "w1", "owner": "ann", "jobs": [
        shell("a", uid="u-a"), shell("b", uid="u-b", memory_mb=4000, task="big-ones"),
    ]})  # fmt: skip
    assert reply.status_code == 201
    body = reply.get_json()
    assert set(body["job_ids"]) == {"u-a", "u-b"}
    assert reply.headers["Location"].endswith(f"/api/v1/workflows/{body['workflow_id']}")
    assert count(engine, s.jobs) == 2
    assert dispatcher.messages == [{"kind": "ready", "queues": ["big", "small"]}]


def test_one_bad_job_refuses_the_whole_submission_and_stores_nothing(api, engine, dispatcher):
    reply = api.post(
        f"{PREFIX}/workflows", json={"name": "w", "jobs": [shell("good"), {"name": "bad", "cores": "2"}]}
    )
    assert reply.status_code == 400
    body = reply.get_json()
    assert "nothing was stored" in body["error"]
    assert body["problems"] == ["jobs[1].cores: expected an integer of at least 1, got '2' (job 'bad')"]
    assert count(engine, s.jobs) == 0
    assert count(engine, s.workflows) == 0
    assert dispatcher.messages == []


def test_a_job_no_queue_can_hold_is_refused_with_the_reason(api, engine):
    reply = api.post(f"{PREFIX}/workflows", json={"name": "w", "jobs": [shell("huge", memory_mb=100_000)]})
    assert reply.status_code == 400
    problem = reply.get_json()["problems"][0]
    assert "no queue can hold" in problem and "holds at most 8000 MB" in problem
    assert count(engine, s.jobs) == 0


def test_python_jobs_send_their_payload_as_base64(api, engine):
    payload = b"\x00\x01packed-apply-message"
    reply = api.post(f"{PREFIX}/workflows", json={"name": "w", "jobs": [
        {"kind": "python", "buffer": base64.b64encode(payload).decode()},
    ]})  # fmt: skip
    assert reply.status_code == 201
    with engine.connect() as conn:
        assert conn.execute(select(s.job_payloads.c.buffer)).scalar_one() == payload


def test_a_payload_that_is_not_base64_is_refused(api, engine):
    reply = api.post(f"{PREFIX}/workflows", json={"name": "w", "jobs": [{"kind": "python", "buffer": "%%%"}]})
    assert reply.status_code == 400
    assert reply.get_json()["problems"] == [
        "jobs[0].buffer: expected base64 text (the payload bytes, base64-encoded), got '%%%'"
    ]
    assert count(engine, s.jobs) == 0


def test_the_old_name_of_the_payload_field_is_refused_with_its_new_name(api, engine):
    payload = base64.b64encode(b"bytes").decode()
    reply = api.post(f"{PREFIX}/workflows", json={"name": "w", "jobs": [{"buffer_b64": payload}]})
    assert reply.status_code == 400
    assert reply.get_json()["problems"] == [
        "jobs[0].buffer_b64: renamed 'buffer' (the same base64 text); rename the key"
    ]
    assert count(engine, s.jobs) == 0


def test_a_python_job_without_its_payload_is_refused(api, engine):
    reply = api.post(f"{PREFIX}/workflows", json={"name": "w", "jobs": [{"name": "f", "kind": "python"}]})
    assert reply.status_code == 400
    assert "jobs[0] (f): a python job needs 'buffer'" in reply.get_json()["problems"][0]


def test_every_refused_job_is_listed_with_each_of_its_bad_fields(api, engine):
    jobs = [shell("a"), shell("b", cores=0, memory_mb=-1), shell("c"), {"name": "d", "kind": "python"},
            shell("e", queue="nowhere")]  # fmt: skip
    reply = api.post(f"{PREFIX}/workflows", json={"name": "w", "jobs": jobs})
    assert reply.status_code == 400
    assert reply.get_json()["problems"] == [
        "jobs[1].cores: expected an integer of at least 1, got 0 (job 'b'); "
        "jobs[1].memory_mb: expected a non-negative integer, got -1 (job 'b')",
        "jobs[3] (d): a python job needs 'buffer' (parsl pack_apply_message bytes; base64 over JSON)",
        "jobs[4] (e): unknown queue 'nowhere'; known queues: ['big', 'small']",
    ]
    assert count(engine, s.jobs) == 0


def test_a_body_that_is_not_json_is_a_400(api):
    reply = api.post(f"{PREFIX}/workflows", data="{name: oops", content_type="application/json")
    assert reply.status_code == 400
    assert "not valid JSON" in reply.get_json()["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"jobs": [{"command": "true"}]}, "the request body: 'name' is missing; it is required"),
        ({"name": "w", "jobs": "echo"}, "jobs: expected a non-empty list of job objects, got 'echo'"),
        ({"name": "w", "jobs": []}, "jobs: expected a non-empty list of job objects, got an empty list"),
        (
            {"name": " ", "jobs": [{"command": "true"}]},
            "name: expected a non-empty string (the name), got ' '",
        ),
        ({"name": "w", "jobs": [{"command": "true"}], "prio": 1}, "the request body: unknown field 'prio'"),
        ({"name": "w", "jobs": [{"command": "true"}], "owner": 7}, "owner: expected a string of at most 128"),
        ({"name": "w" * 256, "jobs": [{"command": "true"}]}, "name: expected a non-empty string (the name)"),
        (
            {"name": "w", "jobs": [{"command": "true"}], "available": [""]},
            "available[0]: expected a non-empty",
        ),
        ([1, 2], "the request body: expected an object, got a list"),
    ],
)
def test_a_body_of_the_wrong_shape_is_a_400_saying_what_is_wrong(api, body, message):
    reply = api.post(f"{PREFIX}/workflows", json=body)
    assert reply.status_code == 400
    assert message in reply.get_json()["error"]


# ---------------------------------------------------------------- job listings


@pytest.fixture
def mixed(workload):
    """Five jobs: 1 finished, 2 failed (small queue), 3-4 ready (small), 5 ready (big)."""
    ids = workload.submit([{"name": f"job-{i}"} for i in range(4)] + [{"name": "large", "memory_mb": 4000}])
    pilot = workload.pilot()
    workload.dispatch(pilot, n=2)
    workload.report(ids[0], ok=True)
    workload.report(
        ids[1], ok=False, error_code=int(ErrorCode.PAYLOAD_EXCEPTION), error_diag="ZeroDivisionError"
    )
    return ids


def test_jobs_are_filtered_by_status(api, mixed):
    reply = api.get(f"{PREFIX}/jobs?status=ready")
    assert [j["id"] for j in reply.get_json()["jobs"]] == mixed[2:]


def test_several_statuses_may_be_comma_separated(api, mixed):
    reply = api.get(f"{PREFIX}/jobs?status=finished,failed")
    assert [j["status"] for j in reply.get_json()["jobs"]] == ["finished", "failed"]


def test_jobs_are_filtered_by_queue_and_name_substring(api, mixed):
    assert [j["name"] for j in api.get(f"{PREFIX}/jobs?queue=big").get_json()["jobs"]] == ["large"]
    assert [j["id"] for j in api.get(f"{PREFIX}/jobs?name=job-3").get_json()["jobs"]] == [mixed[3]]


def test_jobs_are_paged_in_id_order_with_the_total(api, mixed):
    page = api.get(f"{PREFIX}/jobs?limit=2&offset=1").get_json()
    assert [j["id"] for j in page["jobs"]] == mixed[1:3]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)


def test_an_unknown_status_filter_is_a_400_listing_the_allowed_states(api):
    reply = api.get(f"{PREFIX}/jobs?status=ready,done")
    assert reply.status_code == 400
    assert "'done'" in reply.get_json()["error"] and "finished" in reply.get_json()["error"]


def test_an_unknown_queue_filter_is_a_400_listing_the_queues(api):
    reply = api.get(f"{PREFIX}/jobs?queue=medium")
    assert reply.status_code == 400
    assert "known queues: big, small" in reply.get_json()["error"]


def test_a_misspelt_query_parameter_is_refused_rather_than_ignored(api):
    reply = api.get(f"{PREFIX}/jobs?stauts=failed")
    assert reply.status_code == 400
    assert "['stauts']" in reply.get_json()["error"]


def test_a_query_parameter_given_twice_is_refused_rather_than_half_read(api):
    reply = api.get(f"{PREFIX}/jobs?limit=5&limit=x")
    assert reply.status_code == 400
    assert reply.get_json()["error"] == "query parameter(s) ['limit'] given more than once; give each once"


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=ten", "offset=-1", "workflow_id=x", "limit=", "status="]
)
def test_bad_paging_or_id_values_are_a_400(api, query):
    reply = api.get(f"{PREFIX}/jobs?{query}")
    assert reply.status_code == 400
    assert reply.get_json()["error"]


# ---------------------------------------------------------------- job detail and logs


def test_job_detail_has_the_attempt_history_with_errors_and_memory_samples(api, workload):
    [job_id] = workload.submit([{"name": "flaky"}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    workload.report(job_id, ok=False, error_code=int(ErrorCode.OUT_OF_MEMORY), error_diag="rss above 2000 MB",
                    memory_samples=[(1.0, 10.5, 9.0), (2.0, 2100.0, 2000.0)])  # fmt: skip
    workload.dispatch(pilot)
    workload.report(job_id, ok=True)
    job = api.get(f"{PREFIX}/jobs/{job_id}").get_json()
    assert job["status"] == "finished" and job["attempt"] == 2
    first, second = job["attempts"]
    assert (first["status"], first["error_name"], first["error_diag"]) == (
        "failed",
        "OUT_OF_MEMORY",
        "rss above 2000 MB",
    )
    assert "memory limit" in first["error_description"]
    assert first["memory_samples"] == [[1.0, 10.5, 9.0], [2.0, 2100.0, 2000.0]]
    assert first["pilot"] == "pilot-1"
    assert second["status"] == "finished" and second["error_code"] == 0


def test_job_detail_never_contains_payload_bytes(api):
    payload = base64.b64encode(b"secret-bytes").decode()
    reply = api.post(
        f"{PREFIX}/workflows", json={"name": "w", "jobs": [{"kind": "python", "buffer": payload}]}
    )
    job_id = next(iter(reply.get_json()["job_ids"].values()))
    text = api.get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert reply.status_code == 201
    assert payload not in text and "buffer" not in text


def test_an_unknown_job_is_a_404(api):
    reply = api.get(f"{PREFIX}/jobs/999")
    assert reply.status_code == 404
    assert reply.get_json()["error"].startswith("no job 999")


@pytest.fixture
def logged_twice(workload):
    [job_id] = workload.submit([{"name": "logged"}])
    pilot = workload.pilot()
    workload.dispatch(pilot)
    workload.report(job_id, ok=False, error_code=int(ErrorCode.PAYLOAD_NONZERO_EXIT), log=b"first try\n")
    workload.dispatch(pilot)
    workload.report(job_id, ok=True, log=b"second try \xff\n", stdout_tail="second try")
    return job_id


def test_the_log_of_the_latest_attempt_is_plain_text(api, logged_twice):
    reply = api.get(f"{PREFIX}/jobs/{logged_twice}/log")
    assert reply.mimetype == "text/plain"
    assert reply.get_data(as_text=True) == "second try \ufffd\n"
    assert reply.headers["X-Pandaflow-Attempt"] == "2"


def test_an_earlier_attempts_log_is_returned_when_asked(api, logged_twice):
    assert api.get(f"{PREFIX}/jobs/{logged_twice}/log?attempt=1").get_data(as_text=True) == "first try\n"


def test_the_log_is_json_when_json_is_asked_for(api, logged_twice):
    reply = api.get(f"{PREFIX}/jobs/{logged_twice}/log?attempt=1", headers={"Accept": "application/json"})
    assert reply.get_json() == {"job_id": logged_twice, "attempt": 1, "source": "log", "text": "first try\n"}


def test_a_job_without_an_uploaded_log_falls_back_to_its_output_tail(api, workload):
    [job_id] = workload.submit([{"name": "quiet"}])
    workload.dispatch(workload.pilot())
    workload.report(job_id, ok=True, stdout_tail="last lines of stdout")
    reply = api.get(f"{PREFIX}/jobs/{job_id}/log")
    assert reply.get_data(as_text=True) == "last lines of stdout"
    assert reply.headers["X-Pandaflow-Log-Source"] == "tail"


def test_asking_for_an_attempt_that_never_ran_is_a_404(api, logged_twice):
    reply = api.get(f"{PREFIX}/jobs/{logged_twice}/log?attempt=3")
    assert reply.status_code == 404
    assert "attempts 1..2" in reply.get_json()["error"]


# ---------------------------------------------------------------- cancel and retry


def test_cancelling_a_running_job_kills_it_on_its_pilot(api, workload, dispatcher):
    [job_id] = workload.submit([{"name": "long"}])
    workload.dispatch(workload.pilot("pilot-7"))
    reply = api.post(f"{PREFIX}/jobs/cancel", json={"ids": [job_id]})
    assert reply.status_code == 200
    assert reply.get_json()["changed"] == [job_id]
    assert workload.status(job_id) == "cancelled"
    assert dispatcher.of_kind("kill") == [{"kind": "kill", "pilots": {"pilot-7": [job_id]}}]


def test_cancelling_tells_the_executor_that_submitted_the_job(api, workload, dispatcher):
    [job_id] = workload.submit([{"name": "j", "uid": "u1"}], client="executor-1")
    api.post(f"{PREFIX}/jobs/cancel", json={"ids": [job_id]})
    [message] = dispatcher.of_kind("notify")
    [result] = message["notify"]["executor-1"]
    assert (result.uid, result.status) == ("u1", "cancelled")


def test_cancelling_an_ended_job_skips_it_with_the_reason(api, workload, dispatcher):
    [job_id] = workload.submit([{"name": "done"}])
    workload.dispatch(workload.pilot())
    workload.report(job_id, ok=True)
    body = api.post(f"{PREFIX}/jobs/cancel", json={"ids": [job_id]}).get_json()
    assert body["changed"] == []
    assert body["skipped"] == [{"id": job_id, "status": "finished", "reason": "already ended"}]
    assert workload.status(job_id) == "finished"
    assert dispatcher.of_kind("kill") == []


def test_cancelling_unknown_ids_is_a_404_and_changes_nothing(api, workload):
    [job_id] = workload.submit([{"name": "j"}])
    reply = api.post(f"{PREFIX}/jobs/cancel", json={"ids": [job_id, 404]})
    assert reply.status_code == 404
    assert "404" in reply.get_json()["error"]
    assert workload.status(job_id) == "ready"


@pytest.mark.parametrize(
    "ids, message",
    [
        (
            [],
            "ids: expected a non-empty list of at most 100000 job ids (integers from 1 to 2147483647), got",
        ),
        ("1,2", "ids: expected a non-empty list of at most 100000 job ids"),
        ([1, "2"], "ids[1]: expected an id (an integer from 1 to 2147483647), got '2'"),
        ([True], "ids[0]: expected an id (an integer from 1 to 2147483647), got true"),
        ([0], "ids[0]: expected an id (an integer from 1 to 2147483647), got 0"),
        (None, "ids: expected a non-empty list of at most 100000 job ids"),
    ],
)
def test_ids_must_be_a_non_empty_list_of_integers(api, ids, message):
    reply = api.post(f"{PREFIX}/jobs/cancel", json={"ids": ids})
    assert reply.status_code == 400
    assert message in reply.get_json()["error"]


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/jobs/cancel", {"ids": [1], "extra_attempts": 2}, "unknown field 'extra_attempts'"),
        (
            "/jobs/retry",
            {"ids": [1], "extra_attempts": 1.5},
            "extra_attempts: expected an integer from 1 to 1000",
        ),
        (
            "/jobs/retry",
            {"ids": [1], "extra_attempts": 0},
            "extra_attempts: expected an integer from 1 to 1000",
        ),
        (
            "/workflows/1/retry",
            {"extra_attempts": True},
            "extra_attempts: expected an integer from 1 to 1000",
        ),
        ("/workflows/1/cancel", {"force": True}, "the request body: unknown field 'force'"),
        ("/jobs/cancel", None, "send a JSON object body with 'ids'"),
    ],
)
def test_cancel_and_retry_bodies_are_checked(api, workload, path, body, message):
    workload.submit([{"name": "a"}])
    reply = api.post(f"{PREFIX}{path}", json=body) if body is not None else api.post(f"{PREFIX}{path}")
    assert reply.status_code == 400
    assert message in reply.get_json()["error"]


def test_retrying_a_failed_job_puts_it_back_in_the_queue_and_pokes_the_dispatcher(api, workload, dispatcher):
    [job_id] = workload.submit([{"name": "bad"}])
    workload.dispatch(workload.pilot())
    workload.report(job_id, ok=False, error_code=int(ErrorCode.PAYLOAD_EXCEPTION))
    body = api.post(f"{PREFIX}/jobs/retry", json={"ids": [job_id]}).get_json()
    assert body["changed"] == [job_id]
    assert workload.status(job_id) == "ready"
    assert dispatcher.of_kind("ready") == [{"kind": "ready", "queues": ["small"]}]


def test_a_committed_cancel_still_succeeds_when_the_dispatcher_cannot_be_poked(
    api, workload, monkeypatch, dispatcher
):
    def unreachable(message):
        raise OSError("socket closed")

    monkeypatch.setattr(dispatcher, "poke", unreachable)
    [job_id] = workload.submit([{"name": "j"}], client="executor-1")
    assert api.post(f"{PREFIX}/jobs/cancel", json={"ids": [job_id]}).status_code == 200
    assert workload.status(job_id) == "cancelled"


def test_retrying_a_job_that_has_not_ended_skips_it(api, workload, dispatcher):
    [job_id] = workload.submit([{"name": "waiting"}])
    body = api.post(f"{PREFIX}/jobs/retry", json={"ids": [job_id]}).get_json()
    assert body["changed"] == [] and body["skipped"][0]["reason"] == "only failed or cancelled jobs"
    assert dispatcher.messages == []


def test_cancelling_a_workflow_cancels_every_job_that_has_not_ended(api, workload, mixed):
    body = api.post(f"{PREFIX}/workflows/1/cancel").get_json()
    assert sorted(body["changed"]) == mixed[2:]
    assert [workload.status(i) for i in mixed] == [
        "finished",
        "failed",
        "cancelled",
        "cancelled",
        "cancelled",
    ]


def test_retrying_a_workflow_retries_only_its_failed_and_cancelled_jobs(api, workload, mixed):
    api.post(f"{PREFIX}/jobs/cancel", json={"ids": [mixed[2]]})
    body = api.post(f"{PREFIX}/workflows/1/retry", json={"extra_attempts": 2}).get_json()
    assert sorted(body["changed"]) == [mixed[1], mixed[2]]
    assert workload.status(mixed[1]) == "ready"


def test_cancelling_an_unknown_workflow_is_a_404(api):
    reply = api.post(f"{PREFIX}/workflows/42/cancel")
    assert reply.status_code == 404
    assert "no workflow 42" in reply.get_json()["error"]


# ---------------------------------------------------------------- workflows, tasks, pilots, queues


def test_workflow_listing_derives_each_status_from_its_job_counts(api, workload, mixed):
    [done] = workload.submit([{"name": "only", "priority": 10}], workflow="second")
    workload.dispatch(workload.pilot("p2"), n=1)
    workload.report(done, ok=True)
    listing = api.get(f"{PREFIX}/workflows").get_json()
    assert [(w["name"], w["status"]) for w in listing["workflows"]] == [
        ("second", "finished"),
        ("wf", "running"),
    ]
    assert listing["workflows"][1]["counts"]["ready"] == 3


def test_workflow_detail_lists_its_tasks_with_counts(api, workload):
    workload.submit(
        [{"name": "a", "task": "prep"}, {"name": "b", "task": "fit"}, {"name": "c", "task": "fit"}]
    )
    workflow = api.get(f"{PREFIX}/workflows/1").get_json()
    assert [(t["name"], t["n_jobs"]) for t in workflow["tasks"]] == [("prep", 1), ("fit", 2)]


def test_the_tasks_of_an_unknown_workflow_are_a_404(api):
    assert api.get(f"{PREFIX}/workflows/9/tasks").status_code == 404


def test_tasks_can_be_filtered_by_workflow(api, workload):
    workload.submit([{"name": "a", "task": "one"}], workflow="w1")
    workload.submit([{"name": "b", "task": "two"}], workflow="w2")
    assert [t["name"] for t in api.get(f"{PREFIX}/tasks?workflow_id=2").get_json()["tasks"]] == ["two"]


def test_pilots_are_listed_with_the_jobs_they_hold(api, workload):
    workload.submit([{"name": "a"}, {"name": "b"}])
    workload.dispatch(workload.pilot("busy"))
    [pilot] = api.get(f"{PREFIX}/pilots?status=active").get_json()["pilots"]
    assert (pilot["name"], pilot["jobs_held"], pilot["status"]) == ("busy", 2, "active")


def test_an_unknown_pilot_status_is_a_400(api):
    reply = api.get(f"{PREFIX}/pilots?status=dead")
    assert reply.status_code == 400
    assert reply.get_json()["error"] == (
        "query parameter status: expected one of 'active', 'lost', 'exited', got 'dead'"
    )


def test_queues_show_their_limits_and_live_counts(api, workload, mixed):
    by_name = {q["name"]: q for q in api.get(f"{PREFIX}/queues").get_json()["queues"]}
    assert by_name["small"]["max_memory_mb"] == 2000
    assert (by_name["small"]["ready_jobs"], by_name["small"]["active_pilots"]) == (2, 1)
    assert by_name["big"]["ready_jobs"] == 1


def test_summary_counts_jobs_by_state(api, mixed):
    summary = api.get(f"{PREFIX}/summary").get_json()
    assert summary["jobs"]["ready"] == 3 and summary["jobs"]["finished"] == 1 and summary["n_jobs"] == 5
    assert summary["pilots"]["active"] == 1


def test_errors_are_grouped_by_task_and_error_code(api, mixed):
    [group] = api.get(f"{PREFIX}/errors").get_json()["errors"]
    assert (group["task"], group["error_name"], group["jobs"]) == ("default", "PAYLOAD_EXCEPTION", 1)
    assert group["example_diag"] == "ZeroDivisionError"


def test_errorcodes_lists_every_code_with_its_meaning(api):
    codes = {c["name"]: c for c in api.get(f"{PREFIX}/errorcodes").get_json()["error_codes"]}
    assert codes["LOST_HEARTBEAT"]["retryable"] is True
    assert len(codes) == len(ErrorCode)


# ---------------------------------------------------------------- errors are JSON


def test_an_unknown_route_is_a_json_404(api):
    reply = api.get(f"{PREFIX}/nothing/here")
    assert reply.status_code == 404
    assert "openapi.json" in reply.get_json()["error"]


def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(api):
    reply = api.delete(f"{PREFIX}/jobs/1")
    assert reply.status_code == 405
    assert "use GET" in reply.get_json()["error"]


def test_an_unexpected_error_is_a_json_500_without_a_stack_trace(api, monkeypatch):
    def broken(conn, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(queries, "summary", broken)
    reply = api.get(f"{PREFIX}/summary")
    assert reply.status_code == 500
    assert reply.get_json() == {"error": "internal error: RuntimeError: disk on fire; see the server log"}


# ---------------------------------------------------------------- OpenAPI


def test_the_openapi_document_describes_every_route_of_the_blueprint(api, app):
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule.removeprefix(PREFIX)), method.lower())
        for r in api_rules(app)
        for method in r.methods - {"HEAD", "OPTIONS"}
    }
    document = api.get(f"{PREFIX}/openapi.json").get_json()
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert described == routes


def test_the_openapi_document_declares_bearer_auth_and_resolves_every_reference(api):
    document = api.get(f"{PREFIX}/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        target = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]


# ---------------------------------------------------------------- DAG files and the bps report


def test_a_dag_file_submitted_over_rest_is_reported_per_label(api, workload, tmp_path):
    from pandaflow import dagfile

    path = tmp_path / "dag.yaml"
    path.write_text(
        "name: rubin\navailable: [raw/1, raw/2]\ntasks:\n  isr: {command: 'isr {name}'}\n"
        "  merge: {command: 'merge {inputs}'}\njobs:\n"
        "  - {name: isr-1, task: isr, inputs: [raw/1], outputs: [post/1]}\n"
        "  - {name: isr-2, task: isr, inputs: [raw/2], outputs: [post/2]}\n"
        "  - {name: merge, task: merge, inputs: [post/1, post/2]}\n"
    )
    reply = api.post(f"{PREFIX}/workflows", json=dagfile.load(path).body)
    assert reply.status_code == 201, reply.get_json()
    wid = reply.get_json()["workflow_id"]
    pilot = workload.pilot()
    first, _second = workload.dispatch(pilot)
    workload.report(first, ok=True)
    report = api.get(f"{PREFIX}/workflows/{wid}/report").get_json()
    assert report["name"] == "rubin" and report["bps_state"] == "RUNNING"
    by_label = {x["label"]: x["counts"] for x in report["labels"]}
    isr = {column: n for column, n in by_label["isr"].items() if n}
    assert isr == {"SUCCEEDED": 1, "PENDING": 1, "EXPECTED": 2}  # one finished, one dispatched
    assert by_label["merge"]["UNREADY"] == 1 and report["total"]["EXPECTED"] == 3


def test_the_report_of_an_unknown_workflow_is_a_404(api):
    reply = api.get(f"{PREFIX}/workflows/99/report")
    assert reply.status_code == 404 and "no workflow 99" in reply.get_json()["error"]


def test_the_report_takes_no_query_parameters(api, workload):
    workload.submit([{"name": "a"}])
    assert api.get(f"{PREFIX}/workflows/1/report?label=isr").status_code == 400
