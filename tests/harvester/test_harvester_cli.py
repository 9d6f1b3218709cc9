"""``pandaflow harvester`` and ``pandaflow workers`` on a server database."""

import json

import pytest
from click.testing import CliRunner
from support.harvest import queue_set
from support.servers import serving

from pandaflow.cli import main
from pandaflow.server.jobs import submission
from pandaflow.server.store.db import open_database


@pytest.fixture
def database(tmp_path, fake_provider):
    url = f"sqlite:///{tmp_path / 'server.db'}"
    engine = open_database(url)
    _, broker = queue_set(engine, {"name": "q", "cores": 1, "provider": {"name": "fake"}, "max_workers": 4})
    jobs = [{"command": "true", "queue": "q"} for _ in range(3)]
    with engine.begin() as conn:
        submission.store(conn, submission.validate(jobs, broker), submission.WorkflowBook(), workflow="wf")
    engine.dispose()
    (tmp_path / "token").write_text("tok")
    return url


def harvest(tmp_path, database, *extra):
    args = [
        "harvester",
        "--once",
        "--db",
        database,
        "--zmq",
        "tcp://127.0.0.1:5555",
        "--token-file",
        str(tmp_path / "token"),
        "--workdir",
        str(tmp_path / "h"),
        "--name",
        "cli",
        *extra,
    ]
    return CliRunner().invoke(main, args)


def test_one_cycle_submits_for_ready_jobs_and_says_what_it_did(tmp_path, database):
    result = harvest(tmp_path, database)
    assert result.exit_code == 0, result.output
    assert "QUEUE" in result.output and "3 ready jobs need 3 slots" in result.output
    listing = CliRunner().invoke(main, ["workers", "--db", database, "--json"])
    data = json.loads(listing.output)
    assert [w["state"] for w in data["workers"]] == ["submitted"] * 3
    assert data["queues"][0]["harvester"] == "cli" and data["queues"][0]["action"].startswith("submitted 3")


def test_json_output_lists_the_submitted_worker_ids(tmp_path, database):
    result = CliRunner().invoke(main, ["--json", *harvest_args(tmp_path, database)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["q"]["submitted"] == [1, 2, 3]


def harvest_args(tmp_path, database):
    return [
        "harvester",
        "--once",
        "--db",
        database,
        "--zmq",
        "tcp://127.0.0.1:5555",
        "--token-file",
        str(tmp_path / "token"),
        "--workdir",
        str(tmp_path / "h"),
    ]


def test_the_token_file_is_given_to_pilots_as_it_is(tmp_path, database, fake_provider):
    harvest(tmp_path, database)
    command = fake_provider.instances[0].submitted[0][1]
    assert f"--token-file {tmp_path / 'token'}" in command


def test_without_a_database_the_harvester_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "empty-home"))
    result = CliRunner().invoke(main, ["harvester", "--once", "--zmq", "tcp://127.0.0.1:1"])
    assert result.exit_code != 0 and "no database known: pass --db URL" in result.output


def test_a_bad_queue_file_is_reported_with_file_and_key(tmp_path, database):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"queues": [{"name": "q", "provider": {"name": "slurm", "partiton": "x"}}]}))
    result = harvest(tmp_path, database, "--queues", str(bad))
    assert result.exit_code != 0 and "bad.json: queues[0].provider.partiton: unknown key" in result.output


def test_workers_filters_by_state_and_refuses_unknown_states(tmp_path, database):
    harvest(tmp_path, database)
    empty = CliRunner().invoke(main, ["workers", "--db", database, "--state", "running"])
    assert empty.exit_code == 0 and "no workers match" in empty.output
    table = CliRunner().invoke(main, ["workers", "--db", database, "--state", "submitted,running"])
    assert "workers 1-3 of 3" in table.output and "fake" in table.output
    bad = CliRunner().invoke(main, ["workers", "--db", database, "--state", "zombie"])
    assert bad.exit_code != 0 and "unknown worker state" in bad.output


def test_the_harvester_asks_a_running_server_where_pilots_should_connect(tmp_path, fake_provider):
    from pandaflow.client import Client

    queues = tmp_path / "queues.json"
    queues.write_text(json.dumps({"queues": [{"name": "q", "provider": {"name": "fake"}, "max_workers": 2}]}))
    (tmp_path / "token").write_text("server-token")
    db = f"sqlite:///{tmp_path / 'live.db'}"
    with serving(db, "server-token", queues_file=str(queues)) as server:
        Client(server.url, "server-token").submit("wf", [{"command": "true", "queue": "q"}])
        result = CliRunner().invoke(
            main,
            [
                "harvester",
                "--once",
                "--db",
                db,
                "--server",
                server.url,
                "--token-file",
                str(tmp_path / "token"),
                "--workdir",
                str(tmp_path / "h"),
            ],
        )
        assert result.exit_code == 0, result.output
        command = fake_provider.instances[0].submitted[0][1]
        assert f"--zmq {server.dispatcher.endpoint} " in command
