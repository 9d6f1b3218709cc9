"""Push queues end to end with real pilots: parsl's LocalProvider starts them, the job server's
dispatcher hands each pilot the jobs the harvester reserved for its worker, a worker whose pilot
never comes up gives its jobs to the next one, and a reservation outlives a server restart."""

import json
import shlex
import subprocess
import sys

from support.lookups import rows
from support.peers import Peer
from support.servers import local_server
from support.waiting import wait_until

from pandaflow.client import Client
from pandaflow.harvester import Harvester, HarvesterConfig
from pandaflow.server.store import schema as s

TOKEN = "push-token"


def queue_file(tmp_path, **overrides):
    entry = {
        "name": "pushed",
        "mode": "push",
        "cores": 1,
        "max_memory_mb": 2000,
        "provider": {"name": "local"},
        "max_workers": 2,
        "worker_idle_s": 1.5,
        "arrival_timeout_s": 60,
        **overrides,
    }
    path = tmp_path / "queues.json"
    path.write_text(json.dumps({"queues": [entry]}))
    return str(path)


def start_server(tmp_path, queues, **cfg):
    return local_server(
        f"sqlite:///{tmp_path / 'server.db'}",
        TOKEN,
        queues_file=queues,
        heartbeat_interval=0.5,
        heartbeat_timeout=5.0,
        **cfg,
    )


def finished(server, n):
    found = rows(server, s.jobs)
    return len(found) == n and all(j["status"] == "finished" for j in found) and found


def test_each_harvested_pilot_runs_exactly_the_jobs_reserved_for_its_worker(tmp_path, process_tag):
    server = start_server(
        tmp_path,
        queue_file(tmp_path),
        harvester=True,
        harvester_interval=0.25,
        harvester_workdir=str(tmp_path / "harvester"),
    )
    try:
        jobs = [{"name": f"p{i}", "command": f"echo pushed {i}", "queue": "pushed"} for i in range(2)]
        Client(server.url, TOKEN).submit("push-e2e", jobs)
        done = wait_until(lambda: finished(server, 2), 90, "the jobs to finish", interval=0.1)
        workers = {wk["id"]: wk for wk in rows(server, s.workers)}
        # Two one-slot workers, one job reserved for each; each job ran on its own worker's pilot.
        assert len(workers) == 2 and {j["worker_id"] for j in done} == set(workers)
        for job in done:
            assert job["pilot_id"] == workers[job["worker_id"]]["pilot_id"] is not None
        status = rows(server, s.harvester_queues)[0]
        assert status["error"] == ""
        wait_until(
            lambda: all(w["state"] == "cancelled" for w in rows(server, s.workers)),
            30,
            "scale-in",
            interval=0.1,
        )
    finally:
        server.stop()


def test_a_worker_whose_pilot_cannot_start_gives_its_job_to_the_next_worker(tmp_path, process_tag):
    queues = queue_file(tmp_path, max_workers=1)
    server = start_server(tmp_path, queues)
    harvest = Harvester(
        server.engine,
        HarvesterConfig(
            zmq_endpoint=server.dispatcher.endpoint,
            token=TOKEN,
            workdir=str(tmp_path / "harvester"),
            interval=0.25,
            python=str(tmp_path / "no-such-python"),  # the first worker's pilot dies at once
            queues=server.state.queues,
        ),
    )
    try:
        (job_id,) = (
            Client(server.url, TOKEN)
            .submit("doomed-worker", [{"command": "echo ok", "queue": "pushed"}])["job_ids"]
            .values()
        )
        (first,) = harvest.cycle()["pushed"].submitted
        assert rows(server, s.jobs)[0]["worker_id"] == first
        harvest.cfg.python = sys.executable  # the workers after the first can start their pilot
        wait_until(
            lambda: harvest.cycle() and finished(server, 1),
            90,
            "the job to run on a new worker",
            interval=0.1,
        )
        (job,) = rows(server, s.jobs)
        lost, second = rows(server, s.workers)
        assert (lost["id"], second["id"]) == (first, job["worker_id"])
        assert "no-such-python" in lost["error"] and lost["pilot_id"] is None
        assert job["id"] == job_id and job["pilot_id"] == second["pilot_id"] and job["attempt"] == 1
    finally:
        harvest.stop()
        server.stop()


def test_a_reservation_survives_a_server_restart_and_no_other_pilot_takes_it(
    tmp_path, process_tag, fake_provider
):
    """The harvester reserves a job for a worker it hands to a provider that starts nothing; the
    server restarts; a pilot started by hand pulls from the queue meanwhile; then the worker's
    command runs: its pilot, and only it, gets the reserved job."""
    queues = queue_file(tmp_path, provider={"name": "fake"}, max_workers=1)
    server = start_server(tmp_path, queues)
    harvest_cfg = dict(token=TOKEN, workdir=str(tmp_path / "harvester"), name="h", queues=server.state.queues)
    harvest = Harvester(
        server.engine, HarvesterConfig(zmq_endpoint=server.dispatcher.endpoint, **harvest_cfg)
    )
    client = Client(server.url, TOKEN)
    (reserved_id,) = client.submit("reserved", [{"command": "echo reserved", "queue": "pushed"}])[
        "job_ids"
    ].values()
    (worker,) = harvest.cycle()["pushed"].submitted
    (_job, command) = fake_provider.instances[0].submitted[0]
    server.stop()

    server = start_server(tmp_path, queues)
    pilots = []
    try:
        restarted = Harvester(
            server.engine, HarvesterConfig(zmq_endpoint=server.dispatcher.endpoint, **harvest_cfg)
        )
        report = restarted.cycle()["pushed"]
        assert report.submitted == [] and report.reserved_jobs == 1
        (free_id,) = (
            Client(server.url, TOKEN)
            .submit("free", [{"command": "echo free", "queue": "pushed"}])["job_ids"]
            .values()
        )
        by_hand = [
            sys.executable, "-m", "pandaflow.pilot", "--zmq", server.dispatcher.endpoint, "--queue", "pushed",
            "--cores", "1", "--token-file", str(tmp_path / "harvester" / "token"), "--idle-timeout", "30",
            "--workdir", str(tmp_path / "by-hand"),
        ]  # fmt: skip
        (tmp_path / "by-hand").mkdir()
        pilots.append(subprocess.Popen(by_hand))
        wait_until(
            lambda: rows(server, s.jobs)[1]["status"] == "finished",
            60,
            "the pulling pilot's job",
            interval=0.1,
        )
        assert rows(server, s.jobs)[0]["status"] == "reserved"
        # The command the provider was given, pointed at the restarted server's dispatcher.
        args = shlex.split(command)
        args[args.index("--zmq") + 1] = server.dispatcher.endpoint
        pilots.append(subprocess.Popen(args))
        wait_until(lambda: finished(server, 2), 60, "the reserved job", interval=0.1)
        reserved, free = rows(server, s.jobs)
        (worker_row,) = rows(server, s.workers)
        assert (reserved["id"], free["id"]) == (reserved_id, free_id)
        assert reserved["worker_id"] == worker and reserved["pilot_id"] == worker_row["pilot_id"]
        assert free["pilot_id"] != reserved["pilot_id"] and free["worker_id"] is None
    finally:
        for proc in pilots:
            proc.terminate()
        for proc in pilots:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


def new_worker(server, reserve=0):
    """A worker row of the push queue, with ``reserve`` ready jobs reserved for it; returns its id."""
    from pandaflow.harvester import workers as w
    from pandaflow.server.dispatch import push

    with server.engine.begin() as conn:
        worker = w.create(
            conn, queue="pushed", harvester="h", provider="local", cores=1, memory_mb=None, now=0
        )
        if reserve:
            push.reserve(conn, worker_id=worker, queue="pushed", cores=reserve, memory_mb=None, now=0)
    return worker


def test_a_push_pilots_request_is_served_its_reserved_jobs_first_then_the_queues_ready_ones(tmp_path):
    """At the protocol level: the pilot registers with its worker id and asks for work; the reply
    holds the jobs reserved for its worker, even ahead of a higher-priority ready job, then fills
    the rest of the request from the queue."""
    server = start_server(tmp_path, queue_file(tmp_path))
    pilot = Peer(server.dispatcher.endpoint, "push-pilot", TOKEN)
    try:
        client = Client(server.url, TOKEN)
        first, second = client.submit("r", [{"command": "true", "queue": "pushed"}] * 2)["job_ids"].values()
        worker = new_worker(server, reserve=1)
        (urgent,) = client.submit("u", [{"command": "true", "queue": "pushed", "priority": 9}])[
            "job_ids"
        ].values()
        pilot.send("register", queue="pushed", cores=2, worker_id=worker)
        pilot.recv("registered", timeout=10.0)
        pilot.send("request", want={"n": 2, "cores": 2})
        handed = [job["job_id"] for job in pilot.recv("jobs", timeout=10.0)["jobs"]]
        if len(handed) < 2:  # the reserved jobs and the pulled ones may come as two messages
            handed += [job["job_id"] for job in pilot.recv("jobs", timeout=10.0)["jobs"]]
        assert handed == [first, urgent]  # its own job first, then the queue's by priority
        assert rows(server, s.jobs)[second - 1]["status"] == "ready"  # left for whoever asks next
        assert rows(server, s.workers)[0]["pilot_id"] is not None
    finally:
        pilot.close()
        server.stop()


def test_a_push_pilot_gets_its_reserved_jobs_while_other_pilots_of_the_queue_wait_for_work(tmp_path):
    """An idle pilot of the queue asked first and found nothing: that must not hide the jobs
    reserved for the next pilot's worker."""
    server = start_server(tmp_path, queue_file(tmp_path))
    idle = Peer(server.dispatcher.endpoint, "idle", TOKEN)
    pushed = Peer(server.dispatcher.endpoint, "pushed", TOKEN)
    try:
        Client(server.url, TOKEN).submit("r", [{"command": "true", "queue": "pushed"}])
        worker = new_worker(server, reserve=1)
        idle.send("register", queue="pushed", cores=1, worker_id=new_worker(server))
        idle.recv("registered", timeout=10.0)
        idle.send("request", want={"n": 2, "cores": 1})
        idle.send("heartbeat", want={"n": 2, "cores": 1})
        assert idle.recv("hb", timeout=10.0)  # its request was handled (in an earlier or the same turn)
        pushed.send("register", queue="pushed", cores=1, worker_id=worker)
        pushed.recv("registered", timeout=10.0)
        pushed.send("request", want={"n": 2, "cores": 1})
        assert [job["job_id"] for job in pushed.recv("jobs", timeout=10.0)["jobs"]] == [1]
    finally:
        idle.close()
        pushed.close()
        server.stop()
