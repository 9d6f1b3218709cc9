"""End to end with parsl's real LocalProvider: a server with an embedded harvester starts a pilot
for ready jobs, the pilot registers with its worker id and runs them, and once idle it is
scaled in. Then the CLI shows the workers."""

import json

import pytest
from click.testing import CliRunner
from support.lookups import rows
from support.servers import serving
from support.waiting import wait_until

from pandaflow.cli import main
from pandaflow.client import Client
from pandaflow.server.store import schema as s

TOKEN = "harvest-token"


@pytest.fixture
def server(tmp_path, process_tag):
    queues = tmp_path / "queues.json"
    queues.write_text(
        json.dumps(
            {
                "queues": [
                    {
                        "name": "harvested",
                        "cores": 2,
                        "max_memory_mb": 2000,
                        "provider": {"name": "local"},
                        "max_workers": 1,
                        "worker_idle_s": 1.5,
                        "arrival_timeout_s": 60,
                    }
                ]
            }
        )
    )
    with serving(
        f"sqlite:///{tmp_path / 'server.db'}",
        TOKEN,
        queues_file=str(queues),
        heartbeat_interval=0.5,
        heartbeat_timeout=5.0,
        harvester=True,
        harvester_interval=0.25,
        harvester_workdir=str(tmp_path / "harvester"),
    ) as srv:
        yield srv


def test_ready_jobs_get_a_local_pilot_that_runs_them_and_is_scaled_in_when_idle(server, tmp_path):
    client = Client(server.url, TOKEN)
    jobs = [{"name": f"j{i}", "command": f"echo job {i}", "queue": "harvested"} for i in range(4)]
    submitted = client.submit("harvest-e2e", jobs)
    # 4 one-core jobs, 2-core pilots, max_workers 1: one pilot runs them all.
    finished = wait_until(
        lambda: all(r["status"] == "finished" for r in rows(server, s.jobs)) and rows(server, s.jobs),
        60,
        "the jobs to finish",
        interval=0.1,
    )
    assert len(finished) == len(submitted["job_ids"]) == 4
    workers = rows(server, s.workers)
    assert len(workers) == 1 and workers[0]["provider"] == "local"
    pilots = {p["id"]: p for p in rows(server, s.pilots)}
    ran = {j["pilot_id"] for j in finished}
    assert ran == {workers[0]["pilot_id"]}  # every job ran on the harvested pilot
    for w in workers:
        assert w["pilot_id"] in pilots and w["provider_job_id"]  # registered with its --worker-id
        assert pilots[w["pilot_id"]]["queue"] == "harvested" and pilots[w["pilot_id"]]["cores"] == 2
    # Idle for worker_idle_s: the harvester cancels the workers, and their pilots leave.
    wait_until(
        lambda: all(w["state"] == "cancelled" for w in rows(server, s.workers)), 30, "scale-in", interval=0.1
    )
    wait_until(
        lambda: all(p["status"] == "exited" for p in rows(server, s.pilots)),
        15,
        "the pilots to exit",
        interval=0.1,
    )
    for w in rows(server, s.workers):
        assert w["error"].startswith("scaled in") and w["ended_at"] is not None
    status = rows(server, s.harvester_queues)[0]
    assert status["queue"] == "harvested" and status["error"] == ""

    db = f"sqlite:///{tmp_path / 'server.db'}"
    listing = CliRunner().invoke(main, ["workers", "--db", db])
    assert listing.exit_code == 0, listing.output
    assert "harvested" in listing.output and "cancelled" in listing.output and "scaled in" in listing.output
    as_json = json.loads(
        CliRunner().invoke(main, ["workers", "--db", db, "--json", "--state", "cancelled"]).output
    )
    assert as_json["total"] == len(workers) and as_json["queues"][0]["queue"] == "harvested"
