"""The ZeroMQ dispatcher, driven by raw sockets playing an executor and a pilot."""

import time

import pytest
from sqlalchemy import select
from support.lookups import job_row
from support.peers import Peer
from support.servers import serving

from pandaflow import protocol
from pandaflow.errorcodes import ErrorCode
from pandaflow.server.jobs import states
from pandaflow.server.store import schema as s

TOKEN = "secret-token"


@pytest.fixture
def server(tmp_path):
    with serving(
        f"sqlite:///{tmp_path / 'd.db'}", TOKEN, heartbeat_interval=0.5, heartbeat_timeout=1.5
    ) as srv:
        yield srv


def test_a_peer_with_a_wrong_token_is_refused(server):
    peer = Peer(server.dispatcher.endpoint, "intruder", token="wrong")
    peer.send("submit", jobs=[{"command": "echo hi"}], batch=1)
    assert "authentication failed" in peer.recv("error")["message"]
    with server.engine.connect() as conn:
        assert conn.execute(select(s.jobs)).first() is None
    peer.close()


def test_submit_dispatch_result_and_notification_round_trip(server):
    client = Peer(server.dispatcher.endpoint, "client-1", TOKEN)
    pilot = Peer(server.dispatcher.endpoint, "pilot-1", TOKEN)
    pilot.send("register", queue="local", cores=2, host="h", pid=1)
    assert pilot.recv("registered")["pilot_id"] >= 1
    pilot.send("request", want={"n": 4})
    client.send("submit", batch=7, workflow="wf", jobs=[{"uid": "u1", "command": "echo hi", "task": "t"}])
    ack = client.recv("submitted")
    assert ack["batch"] == 7 and ack["rejected"] == {}
    jobs = pilot.recv("jobs")["jobs"]
    assert [j["command"] for j in jobs] == ["echo hi"] and jobs[0]["attempt"] == 1
    job_id = jobs[0]["job_id"]
    assert job_row(server, job_id)["status"] == "dispatched"
    pilot.send(
        "report",
        outcomes=[
            {
                "job_id": job_id,
                "attempt": 1,
                "ok": True,
                "error_code": 0,
                "stdout_tail": "hi\n",
                "log": b"hi\n",
                "started_at": time.time(),
                "ended_at": time.time(),
            }
        ],
    )
    assert pilot.recv("acked")["ids"] == [[job_id, 1]]
    result = client.recv("results")["results"][0]
    assert result["uid"] == "u1" and result["status"] == "finished"
    assert job_row(server, job_id)["stdout_tail"] == "hi\n"
    client.close()
    pilot.close()


def test_a_retryable_failure_is_dispatched_again_with_the_next_attempt_number(server):
    client = Peer(server.dispatcher.endpoint, "client-2", TOKEN)
    pilot = Peer(server.dispatcher.endpoint, "pilot-2", TOKEN)
    pilot.send("register", queue="local", cores=1)
    pilot.recv("registered")
    client.send("submit", batch=1, jobs=[{"uid": "r1", "command": "false", "max_attempts": 2}])
    client.recv("submitted")
    pilot.send("request", want={"n": 1})
    job = pilot.recv("jobs")["jobs"][0]
    pilot.send(
        "report",
        outcomes=[
            {
                "job_id": job["job_id"],
                "attempt": 1,
                "ok": False,
                "exit_code": 1,
                "error_code": int(ErrorCode.PAYLOAD_NONZERO_EXIT),
                "error_diag": "exit 1",
            }
        ],
        want={"n": 1},
    )
    again = pilot.recv("jobs")["jobs"][0]
    assert again["job_id"] == job["job_id"] and again["attempt"] == 2
    pilot.send(
        "report",
        outcomes=[
            {
                "job_id": job["job_id"],
                "attempt": 2,
                "ok": False,
                "exit_code": 1,
                "error_code": int(ErrorCode.PAYLOAD_NONZERO_EXIT),
                "error_diag": "exit 1",
            }
        ],
    )
    final = client.recv("results")["results"][0]
    assert final["status"] == "failed" and final["error_code"] == ErrorCode.PAYLOAD_NONZERO_EXIT
    with server.engine.connect() as conn:
        attempts = conn.execute(
            select(s.attempts.c.attempt, s.attempts.c.status)
            .where(s.attempts.c.job_id == job["job_id"])
            .order_by(s.attempts.c.attempt)
        ).all()
    assert attempts == [(1, "failed"), (2, "failed")]


def test_a_resent_submission_is_stored_once(server):
    client = Peer(server.dispatcher.endpoint, "client-3", TOKEN)
    for _ in range(2):
        client.send("submit", batch=1, jobs=[{"uid": "dup", "command": "echo"}])
        client.recv("submitted")
    with server.engine.connect() as conn:
        assert len(conn.execute(select(s.jobs.c.id).where(s.jobs.c.uid == "dup")).all()) == 1


def test_a_job_no_queue_can_hold_is_rejected_alone(server):
    client = Peer(server.dispatcher.endpoint, "client-4", TOKEN)
    client.send(
        "submit",
        batch=1,
        jobs=[{"uid": "ok", "command": "echo"}, {"uid": "huge", "command": "echo", "cores": 1000}],
    )
    ack = client.recv("submitted")
    assert list(ack["rejected"]) == ["huge"] and "gives at most" in ack["rejected"]["huge"]
    assert ack["accepted"] == 1


def wait_for_status(server, job_id, status, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = job_row(server, job_id)
        if row["status"] == status:
            return row
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {row['status']}, not {status}, after {timeout} s")


def test_a_silent_pilot_is_lost_and_its_running_job_retried_with_lost_heartbeat(server):
    client = Peer(server.dispatcher.endpoint, "client-5", TOKEN)
    pilot = Peer(server.dispatcher.endpoint, "pilot-5", TOKEN)
    pilot.send("register", queue="local", cores=1)
    pilot.recv("registered")
    pilot.send("request", want={"n": 1})
    client.send("submit", batch=1, jobs=[{"uid": "lh", "command": "sleep 100"}])
    job = pilot.recv("jobs")["jobs"][0]
    pilot.send("heartbeat", known=[job["job_id"]], running={job["job_id"]: time.time()})
    wait_for_status(server, job["job_id"], "running")
    pilot.close()  # the pilot dies: no more heartbeats
    row = wait_for_status(server, job["job_id"], "ready")
    assert row["error_code"] == ErrorCode.LOST_HEARTBEAT and row["attempt"] == 1
    assert "retrying" in row["error_diag"]


def test_a_lost_pilot_gives_back_the_attempt_of_a_job_it_never_started(server):
    client = Peer(server.dispatcher.endpoint, "client-5b", TOKEN)
    pilot = Peer(server.dispatcher.endpoint, "pilot-5b", TOKEN)
    pilot.send("register", queue="local", cores=1)
    pilot.recv("registered")
    pilot.send("request", want={"n": 1})
    client.send("submit", batch=1, jobs=[{"uid": "lb", "command": "sleep 100", "max_attempts": 1}])
    job = pilot.recv("jobs")["jobs"][0]
    assert job["attempt"] == 1
    pilot.close()  # dies before it could start the job
    row = wait_for_status(server, job["job_id"], "ready")
    assert row["attempt"] == 0 and row["error_code"] == 0 and row["pilot_id"] is None
    with server.engine.connect() as conn:
        events = [(e["event"], e["reason"]) for e in states.history(conn, job["job_id"])]
    assert events == [("dispatch", ""), ("return", "its pilot was lost before starting it")]


def test_a_client_that_missed_results_gets_them_by_sync(server):
    client = Peer(server.dispatcher.endpoint, "client-6", TOKEN)
    pilot = Peer(server.dispatcher.endpoint, "pilot-6", TOKEN)
    pilot.send("register", queue="local", cores=1)
    pilot.recv("registered")
    client.send("submit", batch=1, jobs=[{"uid": "s1", "command": "echo"}])
    client.recv("submitted")
    client.close()
    pilot.send("request", want={"n": 1})
    job = pilot.recv("jobs")["jobs"][0]
    pilot.send("report", outcomes=[{"job_id": job["job_id"], "attempt": 1, "ok": True, "error_code": 0}])
    pilot.recv("acked")
    client = Peer(server.dispatcher.endpoint, "client-6", TOKEN)
    client.send("sync", uids=["s1", "never-submitted"])
    replies = {m["op"]: m for m in (client.recv(), client.recv())}
    assert replies["synced"]["unknown"] == ["never-submitted"]
    assert replies["results"]["results"][0]["status"] == "finished"


GARBAGE = [
    (b"\xc1 not msgpack", "authentication failed"),  # no token can be read from it
    (protocol.pack([1, 2, 3]), "authentication failed"),
    (protocol.pack({"tok": TOKEN}), "missing required field `op`"),
    (protocol.pack({"tok": TOKEN, "op": "frobnicate"}), "unknown op 'frobnicate'; known: bye, heartbeat"),
    (protocol.pack({"tok": TOKEN, "op": "register", "queue": 7}), "invalid register message: Expected `str`"),
    (protocol.pack({"tok": TOKEN, "op": "report", "outcomes": [{"job_id": "x"}]}),
     "invalid report message: Expected `int`, got `str` - at `$.outcomes[0].job_id`"),
    (protocol.pack({"tok": TOKEN, "op": "started", "jobs": [[1, 2]]}), "invalid started message"),
    (protocol.pack({"tok": TOKEN, "op": "submit", "batch": 1, "jobs": "all"}), "Expected `array`"),
    (protocol.pack({"tok": TOKEN, "op": "heartbeat", "running": {"a": 1.0}}), "invalid heartbeat message"),
    (protocol.pack({"tok": TOKEN, "op": "request", "want": {"n": 2**63}}), "invalid request message"),
]  # fmt: skip


@pytest.mark.parametrize("frame,error", GARBAGE, ids=range(len(GARBAGE)))
def test_a_frame_that_is_not_a_valid_message_gets_an_error_reply_and_changes_nothing(
    server, frame, error, caplog
):
    peer = Peer(server.dispatcher.endpoint, "odd", TOKEN)
    peer.sock.send(frame)
    assert error in peer.recv("error")["message"]
    peer.send("ping")  # the server goes on serving
    assert peer.recv("pong")["epoch"] == server.dispatcher.epoch
    with server.engine.connect() as conn:
        assert conn.execute(select(s.jobs)).first() is None and conn.execute(select(s.pilots)).first() is None
    if not error.startswith("authentication"):
        assert any("refused a message from b'odd'" in r.getMessage() for r in caplog.records)


def test_a_message_of_several_frames_is_refused(server):
    peer = Peer(server.dispatcher.endpoint, "multi", TOKEN)
    peer.sock.send_multipart([protocol.pack({"tok": TOKEN, "op": "ping"}), b"extra"])
    assert "expected one frame per message, got 2" in peer.recv("error")["message"]


def test_a_bad_message_among_good_ones_does_not_undo_them(server):
    client = Peer(server.dispatcher.endpoint, "client-mixed-batch", TOKEN)
    client.send("submit", batch=1, jobs=[{"uid": "good", "command": "true"}])
    bad = {"tok": TOKEN, "op": "submit", "batch": "two", "jobs": [{"uid": "bad", "command": "true"}]}
    client.sock.send(protocol.pack(bad))
    assert client.recv("submitted")["accepted"] == 1
    with server.engine.connect() as conn:
        assert [r.uid for r in conn.execute(select(s.jobs.c.uid))] == ["good"]


@pytest.fixture
def slow_sweep_server(tmp_path):
    """A server whose periodic rescan of the queues (every heartbeat interval) is too slow to
    hide a request that was passed over."""
    with serving(f"sqlite:///{tmp_path / 'q.db'}", TOKEN, heartbeat_interval=30.0) as srv:
        yield srv


def registered(server, name, cores):
    peer = Peer(server.dispatcher.endpoint, name, TOKEN)
    peer.send("register", queue="local", cores=cores)
    peer.recv("registered")
    return peer


def received(peer, timeout=0.5):
    """Every job the peer is sent within ``timeout`` seconds."""
    jobs, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            jobs += peer.recv("jobs", timeout=max(0.05, deadline - time.time()))["jobs"]
        except AssertionError:
            break
    return jobs


def test_a_pilot_that_can_hold_a_ready_job_gets_it_whatever_smaller_pilots_asked_before(slow_sweep_server):
    server = slow_sweep_server
    small = [registered(server, f"small-{i}", 1) for i in range(2)]
    for peer in small:
        peer.send("request", want={"n": 2, "free": 1, "cores": 1})
    client = Peer(server.dispatcher.endpoint, "client-mixed", TOKEN)
    client.send(
        "submit", batch=1, jobs=[{"uid": f"two-{i}", "command": "true", "cores": 2} for i in range(2)]
    )
    client.recv("submitted")
    assert [received(peer) for peer in small] == [[], []]
    big = registered(server, "big", 2)
    big.send("request", want={"n": 2, "free": 1, "cores": 2})
    assert len(big.recv("jobs", timeout=2.0)["jobs"]) >= 1


def test_free_slots_are_served_before_any_pilot_prefetches(slow_sweep_server):
    server = slow_sweep_server
    a, b = registered(server, "pf-a", 1), registered(server, "pf-b", 1)
    a.send("request", want={"n": 5, "free": 1, "cores": 1})
    b.send("request", want={"n": 5, "free": 1, "cores": 1})
    client = Peer(server.dispatcher.endpoint, "client-pf", TOKEN)
    client.send("submit", batch=1, jobs=[{"uid": f"pf-{i}", "command": "true"} for i in range(4)])
    client.recv("submitted")
    got_a, got_b = received(a), received(b)
    assert len(got_a) + len(got_b) == 4 and got_a and got_b


def test_a_pilot_with_a_free_slot_gets_a_job_another_pilot_holds_unstarted(slow_sweep_server):
    server = slow_sweep_server
    a = registered(server, "hoard-a", 1)
    a.send("request", want={"n": 3, "free": 1, "cores": 1})
    client = Peer(server.dispatcher.endpoint, "client-hoard", TOKEN)
    client.send("submit", batch=1, jobs=[{"uid": f"h-{i}", "command": "sleep 5"} for i in range(3)])
    client.recv("submitted")
    held = received(a)
    assert len(held) == 3
    a.send("started", jobs=[[held[0]["job_id"], 1, time.time()]])
    time.sleep(0.1)
    b = registered(server, "hoard-b", 1)
    b.send("request", want={"n": 1, "free": 1, "cores": 1})
    asked = a.recv("reclaim", timeout=2.0)["jobs"]
    assert len(asked) == 1 and asked[0][0] in {j["job_id"] for j in held[1:]}
    a.send("returned", jobs=asked, want={"n": 0})
    (moved,) = b.recv("jobs", timeout=2.0)["jobs"]
    assert (moved["job_id"], moved["attempt"]) == (asked[0][0], 1)
    with server.engine.connect() as conn:
        events = [e["event"] for e in states.history(conn, moved["job_id"])]
    assert events == ["dispatch", "return", "dispatch"]


def test_pilots_given_the_same_name_get_identities_of_their_own():
    from pandaflow.pilot.agent import PilotConfig

    one, two = (PilotConfig(zmq_endpoint="tcp://x:1", token="t", name="node") for _ in range(2))
    assert one.identity != two.identity
    assert one.identity.startswith("node-") and two.identity.startswith("node-")


def test_an_outcome_the_server_cannot_apply_does_not_hold_back_the_others_of_its_report(server, monkeypatch):
    """A server bug on one outcome: the rest of the report lands and is acknowledged; that one is
    answered with an error (the pilot keeps it and sends it again)."""
    from pandaflow.server.dispatch import completion

    client = Peer(server.dispatcher.endpoint, "client-poison", TOKEN)
    pilot = Peer(server.dispatcher.endpoint, "pilot-poison", TOKEN)
    pilot.send("register", queue="local", cores=3)
    pilot.recv("registered")
    pilot.send("request", want={"n": 3})
    client.send("submit", batch=1, jobs=[{"uid": f"u{i}", "command": "true"} for i in range(3)])
    client.recv("submitted")
    jobs = []
    while len(jobs) < 3:  # quickly: this server takes a pilot silent for 1.5 s for lost
        jobs += pilot.recv("jobs")["jobs"]
    poison = jobs[1]["job_id"]
    real_record = completion.record

    def record(conn, outcomes, *args, **kwargs):
        if any(o.job_id == poison for o in outcomes):
            raise RuntimeError("a bug")
        return real_record(conn, outcomes, *args, **kwargs)

    monkeypatch.setattr(completion, "record", record)
    pilot.send("report", outcomes=[{"job_id": j["job_id"], "attempt": 1, "ok": True} for j in jobs])
    acked, errors = [], []
    while len(acked) < 2 or not errors:
        msg = pilot.recv()
        if msg["op"] == "acked":
            acked += [tuple(i) for i in msg["ids"]]
        elif msg["op"] == "error":
            errors.append(msg["message"])
    assert sorted(acked) == sorted((j["job_id"], 1) for j in jobs if j["job_id"] != poison)
    assert errors == ["server failed to process Report: RuntimeError: a bug"]
    assert [job_row(server, j["job_id"])["status"] for j in jobs] == ["finished", "dispatched", "finished"]
