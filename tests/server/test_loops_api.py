"""The REST routes of loops: open (create or resume), record trials, read progress and the best
trial, end; every refusal changes nothing."""

from __future__ import annotations

import pytest

OPEN = {"name": "gan-1", "kind": "hpo", "config": {"space": {"lr": [1e-4, 1e-1, "log"]}, "sampler": "tpe"},
        "budget": 4, "direction": "minimize"}  # fmt: skip


def _open(api, **changes):
    return api.post("/api/v1/loops", json={**OPEN, **changes})


def test_a_loop_is_created_then_resumed_with_the_same_settings(api):
    created = _open(api)
    assert created.status_code == 201, created.json
    assert created.headers["Location"].endswith("/api/v1/loops/gan-1")
    loop = created.json
    assert (loop["status"], loop["budget"], loop["done"], loop["progress"]) == ("running", 4, 0, 0.0)
    assert loop["workflow"] == "loop gan-1" and loop["best"] is None
    resumed = _open(api)
    assert resumed.status_code == 200 and resumed.json["message"] == "resumed"
    assert api.get("/api/v1/loops").json["total"] == 1


def test_resuming_with_other_settings_is_a_conflict_that_names_them(api):
    _open(api)
    reply = _open(api, config={**OPEN["config"], "sampler": "random"}, direction="maximize")
    assert reply.status_code == 409
    assert "sampler, direction differ" in reply.json["error"] and "nothing was changed" in reply.json["error"]
    assert api.get("/api/v1/loops/gan-1").json["config"]["sampler"] == "tpe"


def test_trials_are_recorded_and_the_best_one_is_shown(api):
    _open(api)
    asked = [{"number": i, "params": {"lr": 10.0**-i}, "iteration": i // 2} for i in range(3)]
    assert api.post("/api/v1/loops/gan-1/trials", json={"trials": asked}).json == {"numbers": [0, 1, 2]}
    told = [{"number": 0, "state": "complete", "value": 0.5},
            {"number": 1, "state": "complete", "value": 0.25},
            {"number": 2, "state": "failed", "error": "exit code 3", "attempts": 2}]  # fmt: skip
    assert api.post("/api/v1/loops/gan-1/trials", json={"trials": told}).status_code == 200
    loop = api.get("/api/v1/loops/gan-1").json
    assert loop["counts"] == {"running": 0, "complete": 2, "failed": 1}
    assert (loop["done"], loop["progress"]) == (3, 0.75)
    assert loop["best"]["number"] == 1 and loop["best"]["params"] == {"lr": 0.1}
    by_value = api.get("/api/v1/loops/gan-1/trials", query_string={"order": "value"}).json["trials"]
    assert [t["number"] for t in by_value] == [1, 0, 2]  # best first, no value last
    failed = api.get("/api/v1/loops/gan-1/trials", query_string={"state": "failed"}).json["trials"]
    assert [(t["number"], t["error"], t["attempts"]) for t in failed] == [(2, "exit code 3", 2)]


def test_a_trial_recorded_again_with_other_params_is_refused_and_nothing_is_written(api):
    _open(api)
    api.post("/api/v1/loops/gan-1/trials", json={"trials": [{"number": 0, "params": {"lr": 0.1}}]})
    reply = api.post("/api/v1/loops/gan-1/trials", json={"trials": [
        {"number": 1, "params": {"lr": 0.2}}, {"number": 0, "params": {"lr": 0.3}}]})  # fmt: skip
    assert reply.status_code == 409 and "trial 0" in reply.json["error"]
    assert [t["number"] for t in api.get("/api/v1/loops/gan-1/trials").json["trials"]] == [0]


@pytest.mark.parametrize(
    ("trials", "status", "says"),
    [
        ([{"number": 5, "state": "complete", "value": 1.0}], 409, "trial 5 of loop 'gan-1' is not recorded"),
        ([{"number": 0, "params": {}}, {"number": 0, "params": {}}], 400, "a trial number appears twice"),
        ([{"number": 0, "params": {}, "value": "NaN"}], 400, "value"),
    ],
)
def test_bad_trial_records_are_refused_with_the_reason(api, trials, status, says):
    _open(api)
    reply = api.post("/api/v1/loops/gan-1/trials", json={"trials": trials})
    assert reply.status_code == status and says in reply.json["error"], reply.json
    assert api.get("/api/v1/loops/gan-1/trials").json["total"] == 0


def test_an_unknown_loop_is_404_and_an_ended_loop_keeps_its_summary(api):
    reply = api.get("/api/v1/loops/nope")
    assert reply.status_code == 404 and "no loop 'nope'" in reply.json["error"]
    assert (
        api.post("/api/v1/loops/nope/trials", json={"trials": [{"number": 0, "params": {}}]}).status_code
        == 404
    )
    _open(api)
    ended = api.post("/api/v1/loops/gan-1/end", json={"status": "finished", "summary": {"best_value": 0.25}})
    assert ended.status_code == 200
    assert (ended.json["status"], ended.json["summary"]) == ("finished", {"best_value": 0.25})
    assert ended.json["ended_at"] is not None
