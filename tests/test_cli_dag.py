"""`pandaflow submit` and `pandaflow report`: DAG files to the server, per-label counts back."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.peers import FlaskSession

from pandaflow.cli import dags, main, sources
from pandaflow.client import Client

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "dags"
HEADER = "UNREADY READY PENDING RUNNING DELETED HELD SUCCEEDED FAILED PRUNED EXPECTED".split()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test may find the token or server address of a real installation."""
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PANDAFLOW_SERVER", raising=False)
    monkeypatch.delenv("PANDAFLOW_TOKEN", raising=False)


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def server(api, monkeypatch):
    """The CLI talks to the test app (the `api` fixture) through its real REST client."""
    monkeypatch.setattr(sources, "client", lambda: Client("http://test", "t", session=FlaskSession(api)))
    return api


def write(tmp_path, doc, name="dag.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


DIAMOND = {
    "name": "diamond",
    "owner": "ann",
    "available": ["raw"],
    "tasks": {
        "split": {"command": "echo split"},
        "work": {"command": "echo {name}", "memory_mb": 1000},
        "merge": {"command": "echo merge {inputs}"},
    },
    "jobs": [
        {"name": "split", "task": "split", "inputs": ["raw"], "outputs": ["part"]},
        {"name": "w1", "task": "work", "inputs": ["part"], "outputs": ["r1"]},
        {"name": "w2", "task": "work", "inputs": ["part"], "outputs": ["r2"]},
        {"name": "merge", "task": "merge", "inputs": ["r1", "r2"]},
    ],
}


def rows(output: str) -> dict[str, list[int]]:
    """The per-label table of `pandaflow report` as label -> counts."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == HEADER)
    return {
        line.split()[0]: [int(x) for x in line.split()[1:]]
        for line in lines[start + 1 :]
        if line.strip() and not line.startswith("-")
    }


# ---------------------------------------------------------------- submit


def test_submit_sends_the_dag_and_prints_the_workflow_id_and_how_to_follow_it(run, server, tmp_path):
    result = run("submit", write(tmp_path, DIAMOND))
    assert result.exit_code == 0, result.output
    assert "submitted workflow 1 'diamond': 4 job(s) in 3 task(s), 1 ready now" in result.output
    assert "pandaflow report 1" in result.output
    jobs = server.get("/api/v1/jobs").get_json()["jobs"]
    assert {j["name"]: j["status"] for j in jobs} == {
        "split": "ready",
        "w1": "pending",
        "w2": "pending",
        "merge": "pending",
    }
    assert {j["name"]: j["memory_mb"] for j in jobs}["w1"] == 1000


def test_submit_json_prints_the_servers_answer(run, server, tmp_path):
    data = json.loads(run("submit", write(tmp_path, DIAMOND), "--json").output)
    assert data["workflow_id"] == 1 and len(data["job_ids"]) == 4 and data["duplicates"] == []


def test_submit_records_the_owner_given(run, server, tmp_path):
    run("submit", "--owner", "bob", write(tmp_path, DIAMOND))
    assert server.get("/api/v1/workflows/1").get_json()["owner"] == "bob"


def test_submit_then_report_round_trip_through_the_rest_api(run, server, workload, tmp_path):
    run("submit", EXAMPLES / "rubin-small.yaml")
    pilot = workload.pilot()
    for job_id in workload.dispatch(pilot, "small"):  # the six isr jobs
        workload.report(job_id, ok=True)
    result = run("report", "1")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert table["TOTAL"] == [9, 6, 0, 0, 0, 0, 6, 0, 0, 21]
    assert table["isr"] == [0, 0, 0, 0, 0, 0, 6, 0, 0, 6]
    assert table["characterizeImage"] == [0, 6, 0, 0, 0, 0, 0, 0, 0, 6]
    assert list(table) == [
        "TOTAL",
        "isr",
        "characterizeImage",
        "calibrate",
        "consolidateVisitSummary",
        "finalMerge",
    ]


def test_submit_sends_the_dags_site_policy_and_prints_the_jobs_per_site(run, server, tmp_path):
    result = run("submit", write(tmp_path, {**DIAMOND, "sites": {"local": 1}}))
    assert result.exit_code == 0, result.output
    assert "jobs per site: local 4" in result.output
    assert server.get("/api/v1/workflows/1").get_json()["sites"] == {"local": 1.0}


def test_a_site_the_server_does_not_know_is_reported_with_the_known_ones(run, server, tmp_path):
    result = run("submit", write(tmp_path, {**DIAMOND, "site": "Mars"}))
    assert result.exit_code == 1 and "unknown site 'Mars' in 'site'; known sites: local" in result.output


def test_a_graph_the_server_refuses_is_reported_with_its_problems(run, server, tmp_path):
    doc = {"name": "w", "jobs": [{"name": "a", "command": "true", "memory_mb": 10**6}]}
    result = run("submit", write(tmp_path, doc))
    assert result.exit_code == 1 and "submission refused" in result.output


def test_an_invalid_file_is_refused_before_anything_is_sent(run, server, tmp_path):
    doc = {"name": "w", "jobs": [{"name": "a", "command": "true", "inputs": "raw"}]}
    path = write(tmp_path, doc)
    result = run("submit", path)
    assert result.exit_code == 1
    assert f"{path}: jobs[0].inputs: expected a list of names" in result.output
    assert server.get("/api/v1/workflows").get_json()["total"] == 0


def test_submit_with_db_is_refused_saying_a_server_is_needed(run, db_url, engine, tmp_path):
    result = run("--db", db_url, "submit", write(tmp_path, DIAMOND))
    assert result.exit_code == 1 and "submit needs a running server" in result.output


def test_dry_run_prints_jobs_per_task_and_the_roots_without_a_server(run, tmp_path):
    result = run("submit", "--dry-run", write(tmp_path, DIAMOND))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert ["split", "1"] in [line.split() for line in lines] and ["work", "2"] in [
        line.split() for line in lines
    ]
    assert "roots (1 ready at submission): split" in result.output
    assert "nothing was submitted" in result.output


def test_dry_run_json_is_the_plan(run, tmp_path):
    plan = json.loads(run("submit", "--dry-run", "--json", write(tmp_path, DIAMOND)).output)
    assert plan["tasks"] == {"split": 1, "work": 2, "merge": 1} and plan["roots"] == ["split"]


def test_dry_run_works_with_db_since_nothing_is_sent(run, db_url, engine, tmp_path):
    assert run("--db", db_url, "submit", "--dry-run", write(tmp_path, DIAMOND)).exit_code == 0


# ---------------------------------------------------------------- report


@pytest.fixture
def progressed(workload):
    """A DAG moved through states: split finished, w1 failed for good (merge pruned), w2 running,
    and an extra task with one job still ready."""
    ids = workload.submit(
        [
            {"name": "split", "task": "split", "outputs": ["part"]},
            {"name": "w1", "task": "work", "inputs": ["part"], "outputs": ["r1"], "max_attempts": 1},
            {"name": "w2", "task": "work", "inputs": ["part"], "outputs": ["r2"]},
            {"name": "merge", "task": "merge", "inputs": ["r1", "r2"]},
        ],
        workflow="diamond",
    )
    pilot = workload.pilot()
    workload.dispatch(pilot)
    workload.report(ids[0], ok=True)
    workload.dispatch(pilot)  # w1 and w2
    workload.report(ids[1], ok=False, error_code=1002)
    return ids


def test_report_reads_a_database_in_the_bps_layout(run, db_url, progressed):
    result = run("--db", db_url, "report", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["X", "STATE", "%S", "ID", "OPERATOR", "RUN"]
    assert lines[2].split() == ["F", "RUNNING", "25", "1", "diamond"]  # owner is empty
    table = rows(result.output)
    assert list(table) == ["TOTAL", "split", "work", "merge"]
    assert table["TOTAL"] == [0, 0, 1, 0, 0, 0, 1, 1, 1, 4]
    assert table["work"] == [0, 0, 1, 0, 0, 0, 0, 1, 0, 2]
    assert table["merge"] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]


def test_report_json_is_what_the_rest_api_returns(run, db_url, progressed, api):
    data = json.loads(run("--db", db_url, "report", "1", "--json").output)
    assert data == api.get("/api/v1/workflows/1/report").get_json()
    assert data["columns"] == HEADER


def test_report_of_an_unknown_workflow_is_a_clear_error(run, db_url, engine):
    result = run("--db", db_url, "report", "42")
    assert result.exit_code == 1 and "no workflow 42" in result.output


def test_report_through_the_server(run, server, progressed):
    assert rows(run("report", "1").output)["TOTAL"] == [0, 0, 1, 0, 0, 0, 1, 1, 1, 4]


def test_the_report_table_has_the_bps_layout():
    data = {
        "id": 7,
        "name": "run-a",
        "owner": "ann",
        "bps_state": "RUNNING",
        "percent_succeeded": 50,
        "columns": HEADER,
        "total": dict(zip(HEADER, [1, 0, 0, 1, 0, 0, 2, 0, 0, 4], strict=True)),
        "labels": [
            {
                "label": "pipetaskInit",
                "counts": dict(zip(HEADER, [0, 0, 0, 0, 0, 0, 1, 0, 0, 1], strict=True)),
            },
            {"label": "isr", "counts": dict(zip(HEADER, [1, 0, 0, 1, 0, 0, 1, 0, 0, 3], strict=True))},
        ],
    }
    assert dags.report_text(data) == "\n".join(
        [
            "X STATE   %S ID OPERATOR RUN",
            "- ------- -- -- -------- -----",
            "  RUNNING 50  7 ann      run-a",
            "",
            "             UNREADY READY PENDING RUNNING DELETED HELD SUCCEEDED FAILED PRUNED EXPECTED",
            "------------ ------- ----- ------- ------- ------- ---- --------- ------ ------ --------",
            "TOTAL              1     0       0       1       0    0         2      0      0        4",
            "------------ ------- ----- ------- ------- ------- ---- --------- ------ ------ --------",
            "pipetaskInit       0     0       0       0       0    0         1      0      0        1",
            "isr                1     0       0       1       0    0         1      0      0        3",
        ]
    )


def test_both_commands_are_offered(run):
    out = run("--help").output
    assert "  submit " in out and "  report " in out
