import json

import pytest
from click.testing import CliRunner
from support.servers import serving

from pandaflow.cli import main
from pandaflow.client import Client
from pandaflow.errorcodes import ErrorCode


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
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture
def db(db_url, workload):
    """A database with a finished, a failed (logged) and a ready job; returns the --db options."""
    ids = workload.submit([{"name": "ok"}, {"name": "broken", "task": "fit"}, {"name": "waiting"}])
    pilot = workload.pilot("pilot-a")
    workload.dispatch(pilot, n=2)
    workload.report(ids[0], ok=True, log=b"all good\n")
    workload.report(ids[1], ok=False, error_code=int(ErrorCode.PAYLOAD_EXCEPTION), error_diag="ValueError: x",
                    log=b"Traceback: ValueError: x\n")  # fmt: skip
    return ["--db", db_url]


def test_every_command_is_offered(run):
    out = run("--help").output
    for command in ("server", "pilot", "status", "jobs", "job", "logs", "cancel", "retry", "hold", "release",
                    "pilots", "queues", "workflows", "errorcodes", "errors"):  # fmt: skip
        assert f"  {command} " in out


def test_status_reads_a_database_without_a_server(run, db):
    result = run(*db, "status")
    assert result.exit_code == 0
    assert "jobs: 3" in result.output
    assert "FINISHED" in result.output and "small" in result.output


def test_jobs_prints_an_aligned_table_with_a_paging_footer(run, db):
    lines = run(*db, "jobs", "--limit", "2").output.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "TASK", "STATUS"]
    assert lines[1].index("ok") == lines[0].index("NAME") == lines[2].index("broken")
    assert lines[-1] == "jobs 1-2 of 3; next page: --offset 2"


def test_jobs_takes_several_statuses_repeated_or_comma_separated(run, db):
    for args in (["--status", "failed", "--status", "ready"], ["--status", "failed,ready"]):
        out = run(*db, "--json", "jobs", *args).output
        assert [j["name"] for j in json.loads(out)["jobs"]] == ["broken", "waiting"]


def test_json_output_is_exactly_what_the_api_returns(run, db, api):
    for args, path in [(["jobs", "--status", "failed"], "/jobs?status=failed"),
                       (["workflows", "1"], "/workflows/1"), (["errors"], "/errors")]:  # fmt: skip
        assert json.loads(run(*db, *args, "--json").output) == api.get("/api/v1" + path).get_json()
    job = api.get("/api/v1/jobs/2").get_json()
    job["events"] = api.get("/api/v1/jobs/2/events").get_json()["events"]
    assert json.loads(run(*db, "job", "2", "--json").output) == job


def test_long_fields_are_cut_to_keep_the_table_readable(run, db_url, workload):
    workload.submit([{"name": "n" * 200}])
    row = run("--db", db_url, "jobs").output.splitlines()[1]
    assert "n" * 29 + "…" in row and "n" * 31 not in row


def test_job_shows_the_error_and_the_attempt_history(run, db):
    out = run(*db, "job", "2").output
    assert "PAYLOAD_EXCEPTION" in out and "ValueError: x" in out
    assert "TRY" in out and "pilot-a" in out


def test_job_shows_the_timeline_of_every_change(run, db):
    out = run(*db, "job", "2").output
    timeline = out.split("timeline:\n", 1)[1].splitlines()
    assert timeline[0].split() == ["WHEN", "EVENT", "STATE", "TRY", "PILOT", "REASON"]
    events = [line.split()[2] for line in timeline[1:4]]
    assert events == ["submit", "dispatch", "fail"]
    assert "dispatched -> failed" in timeline[3] and "error 1001" in timeline[3]


def test_logs_prints_the_log_of_the_latest_attempt(run, db):
    result = run(*db, "logs", "2")
    assert result.output == "Traceback: ValueError: x\n"


def test_logs_of_an_attempt_that_never_ran_is_an_error(run, db):
    result = run(*db, "logs", "2", "--attempt", "5")
    assert result.exit_code == 1
    assert "job 2 has no attempt 5" in result.output


def test_an_unknown_job_is_a_clear_error_not_a_traceback(run, db):
    result = run(*db, "job", "99")
    assert result.exit_code == 1
    assert result.output.startswith("Error: no job 99")
    assert "Traceback" not in result.output


def test_a_bad_status_filter_names_the_allowed_states(run, db):
    result = run(*db, "jobs", "--status", "done")
    assert result.exit_code == 1
    assert "allowed: pending, ready" in result.output


@pytest.mark.parametrize("command", ["cancel", "retry", "hold", "release"])
def test_control_commands_on_a_database_say_a_running_server_is_needed(run, db, command):
    result = run(*db, command, "1")
    assert result.exit_code == 1
    assert f"{command} needs a running server" in result.output and "pandaflow server" in result.output


def test_cancel_needs_job_ids_or_a_workflow(run):
    result = CliRunner().invoke(main, ["--server", "http://127.0.0.1:9", "cancel"])
    assert result.exit_code == 2
    assert "give job ids or --workflow W" in result.output


@pytest.mark.parametrize(
    "args, header",
    [
        (["pilots"], ["ID", "NAME", "QUEUE", "STATUS"]),
        (["queues"], ["QUEUE", "STATUS", "MODE"]),
        (["workflows"], ["ID", "NAME", "OWNER", "STATUS"]),
        (["workflows", "1"], ["workflow:", "1", "wf"]),
        (["errors"], ["WORKFLOW", "TASK", "CODE"]),
        (["errorcodes"], ["CODE", "NAME", "RETRIED", "DESCRIPTION"]),
    ],
)
def test_listings_print_tables_with_headers(run, db, args, header):
    result = run(*db, *args)
    assert result.exit_code == 0
    assert result.output.split("\n")[0].split()[: len(header)] == header


def test_a_missing_database_file_is_reported_and_not_created(run, tmp_path):
    missing = tmp_path / "nope.db"
    result = run("--db", str(missing), "status")
    assert result.exit_code == 1
    assert f"no database file {missing}" in result.output
    assert not missing.exists()


def test_an_unreachable_server_is_reported_with_how_to_start_one(run):
    result = run("--server", "http://127.0.0.1:9", "--token", "t", "status")
    assert result.exit_code == 1
    assert "cannot reach pandaflow server at http://127.0.0.1:9: is it running?" in result.output
    assert "`pandaflow server`" in result.output


def test_without_a_known_server_the_error_says_how_to_name_one(run):
    result = run("jobs")
    assert result.exit_code == 1
    assert "pass --server URL" in result.output and "--db" in result.output


@pytest.fixture
def live_server(tmp_path):
    with serving("sqlite:///" + str(tmp_path / "live.db"), "t", info_file=None) as srv:
        yield srv


def test_a_running_server_lists_and_cancels_jobs_for_the_cli(run, live_server):
    client = Client(live_server.url, "t")
    submitted = client.submit("live", [{"name": "sleepy", "command": "sleep 100"}])
    job_id = submitted["job_ids"].popitem()[1]
    server = ["--server", live_server.url, "--token", "t"]
    assert "sleepy" in run(*server, "jobs").output
    assert run(*server, "cancel", str(job_id)).output == f"cancelled: 1 job(s) {job_id}\n"
    assert client.get_job(job_id)["status"] == "cancelled"


def test_hold_and_release_through_a_running_server(run, live_server):
    client = Client(live_server.url, "t")
    submitted = client.submit("held", [{"name": "a", "command": "true", "task": "isr"},
                                       {"name": "b", "command": "true", "task": "fit"}])  # fmt: skip
    workflow = str(submitted["workflow_id"])
    server = ["--server", live_server.url, "--token", "t"]
    assert run(*server, "hold", "--workflow", workflow, "--task", "isr").output.startswith("held: 1 job(s) ")
    statuses = {j["name"]: j["status"] for j in client.list_jobs(workflow_id=int(workflow))["jobs"]}
    assert statuses["a"] == "held"
    out = run(*server, "release", "--workflow", workflow).output
    assert out.startswith("released: 1 job(s)") and "(ready): not held" in out
    result = run(*server, "hold", "--task", "isr")
    assert result.exit_code == 2 and "give job ids or --workflow W" in result.output


def test_a_wrong_token_is_reported_with_the_servers_message(run, live_server):
    result = run("--server", live_server.url, "--token", "wrong", "status")
    assert result.exit_code == 1
    assert "authentication required" in result.output and "--token" in result.output
