"""The pilot agent against a scripted server: a real ``python -m pandaflow.pilot`` process talks
to a ROUTER socket the test drives, message by message, in the typed protocol."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from pandaflow import protocol

TOKEN = "agent-token"


class ScriptedServer:
    """The server's side of the protocol, one message at a time."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.pilot: bytes | None = None

    def recv(self, kind: type, timeout: float = 30.0) -> protocol.ToServer:
        """The next message of ``kind`` from the pilot (others are dropped); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                identity, frame = self.sock.recv_multipart()
                self.pilot = identity
                message = protocol.to_server(frame)
                assert message.tok == TOKEN
                if isinstance(message, kind):
                    return message
        raise AssertionError(f"no {kind.__name__} from the pilot within {timeout} s")

    def send(self, message) -> None:
        assert self.pilot is not None
        self.sock.send_multipart([self.pilot, protocol.encode(message)])

    def send_raw(self, frame: bytes) -> None:
        assert self.pilot is not None
        self.sock.send_multipart([self.pilot, frame])

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()


@pytest.fixture
def pilot(server, tmp_path, process_tag):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pandaflow.pilot", "--zmq", server.endpoint, "--cores", "1", "--queue", "q",
         "--name", "scripted", "--workdir", str(tmp_path), "--prefetch", "1"],
        env=dict(os.environ, PANDAFLOW_TOKEN=TOKEN), stdout=open(tmp_path / "pilot.log", "wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def registered(server) -> protocol.Register:
    hello = server.recv(protocol.Register)
    server.send(protocol.Registered(pilot_id=1, epoch="e1", heartbeat_interval=30.0))
    return hello


def shell(job_id: int, command: str) -> protocol.Payload:
    return protocol.Payload(job_id=job_id, attempt=1, kind="shell", command=command)


def test_a_pilot_registers_under_an_identity_of_its_own_and_asks_for_its_free_slots(server, pilot):
    hello = registered(server)
    assert (hello.queue, hello.cores) == ("q", 1)
    assert server.pilot.decode().startswith("scripted-") and server.pilot != b"scripted"
    want = server.recv(protocol.Request).want
    assert (want.n, want.free, want.cores) == (2, 1, 1)  # one slot plus a prefetch of one


def test_a_pilot_reports_a_start_promptly_then_the_outcome_until_acknowledged(server, pilot):
    registered(server)
    server.recv(protocol.Request)
    server.send(protocol.Jobs(jobs=[shell(7, "sleep 0.5; echo done")]))
    started = server.recv(protocol.Started, timeout=10)
    assert [(j, a) for j, a, _t in started.jobs] == [(7, 1)]
    report = server.recv(protocol.Report, timeout=10)
    (outcome,) = report.outcomes
    assert (outcome.job_id, outcome.ok, outcome.exit_code, outcome.stdout_tail) == (7, True, 0, "done\n")
    assert outcome.started_at <= started.jobs[0][2] + 0.1 and outcome.ended_at > outcome.started_at
    server.send(protocol.Acked(ids=[(7, 1)]))


def test_garbage_from_the_server_is_ignored_and_the_pilot_goes_on(server, pilot, tmp_path):
    registered(server)
    server.recv(protocol.Request)
    for frame in (
        b"\xc1",
        protocol.pack({"op": "jobs", "jobs": [{"job_id": "x"}]}),
        protocol.pack({"op": "nope"}),
    ):
        server.send_raw(frame)
    server.send(protocol.Jobs(jobs=[shell(8, "true")]))
    (outcome,) = server.recv(protocol.Report, timeout=10).outcomes
    assert (outcome.job_id, outcome.ok) == (8, True)
    assert pilot.poll() is None
    assert "ignored a message from the server" in (tmp_path / "pilot.log").read_text()


def test_a_pilot_gives_back_a_job_it_has_not_started_when_asked(server, pilot):
    registered(server)
    server.recv(protocol.Request)
    server.send(protocol.Jobs(jobs=[shell(1, "sleep 5"), shell(2, "true")]))
    server.recv(protocol.Started, timeout=10)
    server.send(protocol.Reclaim(jobs=[(1, 1), (2, 1)]))  # 1 runs already: only 2 comes back
    returned = server.recv(protocol.Returned, timeout=10)
    assert returned.jobs == [(2, 1)] and returned.want is not None


def test_sigterm_gives_back_queued_jobs_reports_the_running_one_and_says_goodbye(server, pilot):
    registered(server)
    server.recv(protocol.Request)
    server.send(protocol.Jobs(jobs=[shell(1, "sleep 30"), shell(2, "true")]))
    server.recv(protocol.Started, timeout=10)
    pilot.send_signal(signal.SIGTERM)
    assert server.recv(protocol.Returned, timeout=10).jobs == [(2, 1)]
    (outcome,) = server.recv(protocol.Report, timeout=20).outcomes
    assert (outcome.job_id, outcome.ok, outcome.error_code) == (1, False, 1202)  # PILOT_TERMINATED
    server.send(protocol.Acked(ids=[(1, 1)]))
    server.recv(protocol.Bye, timeout=10)
    assert pilot.wait(30) == 0


def test_a_wrong_token_makes_the_pilot_give_up(server, pilot):
    server.recv(protocol.Register)
    server.send(protocol.Error(message="authentication failed: wrong or missing token"))
    assert pilot.wait(30) == 3
