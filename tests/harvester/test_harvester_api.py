"""Workers and the harvesters' per-queue status over REST (``GET /api/v1/workers``, ``GET
/api/v1/queues``), as the monitor reads them, and ``pandaflow workers`` / ``pandaflow queues``
reading them through a server as well as from the database."""

import json
import time

import pytest
from click.testing import CliRunner
from support.servers import local_server

from pandaflow.cli import main
from pandaflow.harvester import workers as w
from pandaflow.server.app import sync_queues
from pandaflow.server.jobs import pilots
from pandaflow.server.jobs.queues import parse_queues

PREFIX = "/api/v1"


@pytest.fixture
def harvested(engine, queues):
    """Three workers on two queues (one with a pilot, one failed) and two harvesters' status."""
    now = time.time()
    with engine.begin() as conn:
        ids = [
            w.create(conn, queue=q, harvester="h1", provider="slurm", cores=4, memory_mb=2000, now=now + i)
            for i, q in enumerate(["small", "small", "big"])
        ]
        w.accepted(conn, ids[0], "1001", None, now)
        pilots.register(conn, {"pilot": "p-1", "queue": "small", "cores": 4, "worker_id": ids[0]}, now)
        w.move(conn, ids[1], w.FAILED, now, error="submit failed: sbatch: error: invalid partition")
        for queue, harvester, error in [
            ("small", "h1", "sbatch: error: invalid partition"),
            ("big", "h2", ""),
        ]:
            w.record_queue(
                conn,
                harvester,
                queue,
                {"cycle_at": now, "ready_jobs": 3, "ready_cores": 3, "idle_slots": 4, "queued_workers": 1,
                 "running_workers": 1, "action": "submitted 1: 3 ready jobs need 3 slots", "error": error,
                 "error_at": now if error else None},
            )  # fmt: skip
    return ids


def document(api):
    return api.get(f"{PREFIX}/openapi.json").get_json()


def conforms(api, data, schema_name):
    jsonschema = pytest.importorskip("jsonschema")
    doc = document(api)
    jsonschema.validate(
        data, {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    )


# ---------------------------------------------------------------- GET /workers


def test_workers_are_listed_newest_first_with_their_pilot_and_the_harvester_status(api, harvested):
    page = api.get(f"{PREFIX}/workers").get_json()
    assert [x["id"] for x in page["workers"]] == harvested[::-1] and page["total"] == 3
    first = page["workers"][-1]
    assert (first["state"], first["pilot"], first["provider_job_id"]) == ("running", "p-1", "1001")
    assert [(q["queue"], q["harvester"]) for q in page["queues"]] == [("big", "h2"), ("small", "h1")]
    conforms(api, page, "WorkerPage")


def test_workers_are_filtered_by_queue_and_state(api, harvested):
    page = api.get(f"{PREFIX}/workers?queue=small&state=running,failed").get_json()
    assert [x["id"] for x in page["workers"]] == [harvested[1], harvested[0]]
    assert [q["queue"] for q in page["queues"]] == ["small"]  # the status of that queue only
    only_failed = api.get(f"{PREFIX}/workers?state=failed").get_json()
    assert [x["error"] for x in only_failed["workers"]] == ["submit failed: sbatch: error: invalid partition"]


def test_workers_are_paged_like_the_other_lists(api, harvested):
    page = api.get(f"{PREFIX}/workers?limit=2&offset=1").get_json()
    assert ([x["id"] for x in page["workers"]], page["total"], page["limit"], page["offset"]) == (
        harvested[1::-1],
        3,
        2,
        1,
    )


@pytest.mark.parametrize(
    "query, message",
    [
        ("state=zombie", "unknown worker state 'zombie'; allowed: submitted, running, finished"),
        ("state=,", "query parameter state: expected one or more worker states separated by commas, got ','"),
        ("state=", "query parameter state: expected one or more worker states separated by commas, got ''"),
        ("queue=nowhere", "unknown queue 'nowhere'; known queues: big, small"),
        ("limit=0", "query parameter limit: expected an integer from 1 to 1000, got '0'"),
        ("limit=5000", "query parameter limit: expected an integer from 1 to 1000, got '5000'"),
        ("limit=many", "query parameter limit: expected an integer from 1 to 1000, got 'many'"),
        ("offset=-1", "query parameter offset: expected a non-negative integer, got '-1'"),
        ("queue=", "query parameter queue: expected a non-empty string of at most 128 characters, got ''"),
        ("stat=running", "unknown query parameter(s) ['stat']"),
    ],
)
def test_bad_worker_filters_are_a_400_saying_what_is_allowed(api, harvested, query, message):
    reply = api.get(f"{PREFIX}/workers?{query}")
    assert reply.status_code == 400 and message in reply.get_json()["error"]


# ---------------------------------------------------------------- GET /queues


def test_each_queue_shows_what_its_harvesters_saw_and_did_last(api, harvested):
    queues = {q["name"]: q for q in api.get(f"{PREFIX}/queues").get_json()["queues"]}
    (small,) = queues["small"]["harvesters"]
    assert (small["harvester"], small["ready_jobs"], small["idle_slots"], small["queued_workers"]) == (
        "h1",
        3,
        4,
        1,
    )
    assert small["action"].startswith("submitted 1") and "invalid partition" in small["error"]
    assert small["error_at"] is not None and queues["big"]["harvesters"][0]["error_at"] is None
    conforms(api, api.get(f"{PREFIX}/queues").get_json(), "QueueList")


def test_a_queue_no_harvester_serves_has_no_harvester_status_and_counts_reserved_jobs(api, workload):
    [queue] = [q for q in api.get(f"{PREFIX}/queues").get_json()["queues"] if q["name"] == "small"]
    assert queue["harvesters"] == [] and queue["reserved_jobs"] == 0


# ---------------------------------------------------------------- the CLI, through a server or a database


@pytest.fixture
def live_server(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PANDAFLOW_SERVER", raising=False)
    srv = local_server(f"sqlite:///{tmp_path / 'live.db'}", "t", start=False)
    queues = parse_queues([{"name": "q", "cores": 2, "provider": {"name": "local"}, "max_workers": 2}])
    sync_queues(srv.engine, queues)
    now = time.time()
    with srv.engine.begin() as conn:
        worker = w.create(conn, queue="q", harvester="h1", provider="local", cores=2, memory_mb=None, now=now)
        w.record_queue(conn, "h1", "q", {"cycle_at": now, "action": "submitted 1: 1 ready job", "error": ""})
    srv.start()
    yield srv, worker
    srv.stop()


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_pandaflow_workers_reads_the_same_json_through_the_server_as_from_the_database(live_server, tmp_path):
    srv, worker = live_server
    remote = cli("--server", srv.url, "--token", "t", "workers", "--json")
    local = cli("workers", "--db", f"sqlite:///{tmp_path / 'live.db'}", "--json")
    assert remote.exit_code == 0 and local.exit_code == 0, remote.output + local.output
    through_server, from_database = json.loads(remote.output), json.loads(local.output)
    for page in (through_server, from_database):
        for item in page["workers"]:
            item.pop("age_s")  # measured at the moment of reading
    assert through_server == from_database and through_server["workers"][0]["id"] == worker


def test_pandaflow_workers_through_the_server_prints_the_tables_and_refuses_a_bad_state(live_server):
    srv, _worker = live_server
    table = cli("--server", srv.url, "--token", "t", "workers")
    assert table.exit_code == 0 and "HARVESTER" in table.output and "submitted 1: 1 ready job" in table.output
    bad = cli("--server", srv.url, "--token", "t", "workers", "--state", "zombie")
    assert bad.exit_code == 1 and "unknown worker state 'zombie'" in bad.output


def test_pandaflow_queues_shows_the_harvester_status_of_each_queue(live_server):
    srv, _worker = live_server
    shown = cli("--server", srv.url, "--token", "t", "queues")
    assert shown.exit_code == 0, shown.output
    assert (
        "RESERVED" in shown.output
        and "LAST CYCLE" in shown.output
        and "submitted 1: 1 ready job" in shown.output
    )
    data = json.loads(cli("--server", srv.url, "--token", "t", "queues", "--json").output)
    assert [h["harvester"] for q in data["queues"] for h in q["harvesters"]] == ["h1"]
