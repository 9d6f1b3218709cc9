"""PayloadRunner: running parsl task buffers and shell commands on a pilot's slots."""

from __future__ import annotations

import os
import select
import signal
import sys
import time

import pytest
from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import deserialize, pack_apply_message

from pandaflow.errorcodes import ErrorCode
from pandaflow.pilot.runner import Outcome, Payload, PayloadRunner

MB = 1 << 20


# ---------------------------------------------------------------- tasks
# Module level: parsl pickles them by reference, and the workers import this module.


def add(a, b):
    return a + b


def fail_with_value_error(message):
    raise ValueError(message)


def fail_with_unpicklable_exception():
    raise ValueError(i for i in range(3))


def call_sys_exit():
    sys.exit(4)


def count_to(n):
    for i in range(1, n + 1):
        print(i)


def chatty():
    print("line on stdout")
    print("line on stderr", file=sys.stderr)
    return "quiet result"


def own_pid():
    return os.getpid()


def job_identity():
    return os.environ["PANDAFLOW_JOB_ID"], os.environ["PANDAFLOW_ATTEMPT"]


def unpicklable_result():
    return (i for i in range(3))  # neither pickle nor dill can serialize a generator


def hold_memory(mb, seconds):
    block = b"x" * (mb * MB)  # filled, so the pages are resident
    time.sleep(seconds)
    return len(block)


def exit_hard(code):
    os._exit(code)


def nap(seconds):
    time.sleep(seconds)
    return seconds


# ---------------------------------------------------------------- helpers


def python(job_id: int, func, *args, **options) -> Payload:
    buffer = pack_apply_message(func, args, {}, buffer_threshold=1 << 20)
    return Payload(job_id=job_id, attempt=1, kind="python", buffer=buffer, **options)


def shell(job_id: int, command: str, **options) -> Payload:
    return Payload(job_id=job_id, attempt=1, kind="shell", command=command, **options)


def collect(runner: PayloadRunner, count: int = 1, timeout: float = 10.0) -> dict[int, Outcome]:
    """Wait for ``count`` outcomes; return them by job id."""
    deadline = time.monotonic() + timeout
    outcomes: dict[int, Outcome] = {}
    while len(outcomes) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(outcomes)} of {count} outcomes within {timeout} s: {outcomes}"
        for outcome in runner.wait(left):
            outcomes[outcome.job_id] = outcome
    return outcomes


def only(runner: PayloadRunner, timeout: float = 10.0) -> Outcome:
    (outcome,) = collect(runner, 1, timeout).values()
    return outcome


@pytest.fixture
def runner(tmp_path):
    r = PayloadRunner(2, str(tmp_path), sample_interval=0.2)
    r.start()
    yield r
    r.stop(grace=1.0)


# ---------------------------------------------------------------- python payloads


def test_python_task_result_round_trips_through_parsl_serialization(runner):
    runner.submit(python(1, add, 2, 40))
    outcome = only(runner)
    assert outcome.ok and outcome.error_code == ErrorCode.OK
    assert deserialize(outcome.result) == 42
    assert not outcome.is_exception
    assert outcome.started_at <= outcome.ended_at


def test_python_task_exception_comes_back_as_remote_exception_wrapper_of_the_original(runner):
    runner.submit(python(1, fail_with_value_error, "bad input"))
    outcome = only(runner)
    assert not outcome.ok and outcome.error_code == ErrorCode.PAYLOAD_EXCEPTION
    assert outcome.is_exception
    assert "ValueError: bad input" in outcome.error_diag
    wrapped = deserialize(outcome.result)
    assert isinstance(wrapped, RemoteExceptionWrapper)
    with pytest.raises(ValueError, match="bad input"):
        wrapped.reraise()


def test_python_exception_that_cannot_be_serialized_comes_back_described_in_a_runtime_error(runner):
    runner.submit(python(1, fail_with_unpicklable_exception))
    outcome = only(runner)
    assert outcome.error_code == ErrorCode.PAYLOAD_EXCEPTION and outcome.is_exception
    with pytest.raises(RuntimeError, match="the task raised ValueError.*could not be serialized"):
        deserialize(outcome.result).reraise()


def test_python_task_calling_sys_exit_fails_as_exception_and_keeps_its_worker(runner):
    runner.submit(python(1, own_pid))
    pid = deserialize(only(runner).result)
    runner.submit(python(2, call_sys_exit))
    outcome = only(runner)
    assert outcome.error_code == ErrorCode.PAYLOAD_EXCEPTION
    with pytest.raises(SystemExit):
        deserialize(outcome.result).reraise()
    runner.submit(python(3, own_pid))
    assert deserialize(only(runner).result) == pid


def test_python_task_stdout_and_stderr_are_captured_in_log_and_tail(runner):
    runner.submit(python(1, chatty))
    outcome = only(runner)
    assert outcome.ok
    assert outcome.log == b"line on stdout\nline on stderr\n"
    assert outcome.stdout_tail == "line on stdout\nline on stderr\n"


def test_python_task_sees_its_job_identity_in_the_environment(runner):
    runner.submit(Payload(7, 3, "python", buffer=pack_apply_message(job_identity, (), {})))
    assert deserialize(only(runner).result) == ("7", "3")


def test_warm_workers_are_reused_across_tasks(runner):
    pids = set()
    for job_id in range(1, 6):
        runner.submit(python(job_id, own_pid))
        pids.add(deserialize(only(runner).result))
    assert len(pids) == 1
    assert pids != {os.getpid()}


def test_unserializable_result_comes_back_as_wrapped_serialization_error(runner):
    runner.submit(python(1, unpicklable_result))
    outcome = only(runner)
    assert outcome.error_code == ErrorCode.SERIALIZATION_ERROR and outcome.is_exception
    assert isinstance(deserialize(outcome.result), RemoteExceptionWrapper)
    assert "generator" in outcome.error_diag


def test_undecodable_buffer_is_a_bad_payload(runner):
    runner.submit(Payload(1, 1, "python", buffer=b"not a parsl buffer"))
    outcome = only(runner)
    assert outcome.error_code == ErrorCode.BAD_PAYLOAD
    assert outcome.error_diag.startswith("cannot unpack the task")


@pytest.mark.parametrize("payload", [Payload(1, 1, "python"), Payload(1, 1, "shell", command=" "),
                                     Payload(1, 1, "perl", command="print 1")])  # fmt: skip
def test_payload_without_content_or_with_unknown_kind_ends_as_bad_payload_without_a_slot(runner, payload):
    runner.submit(payload)
    assert runner.free_slots() == 2
    assert only(runner).error_code == ErrorCode.BAD_PAYLOAD


# ---------------------------------------------------------------- shell payloads


def test_shell_command_success_reports_exit_code_zero_and_its_output(runner):
    runner.submit(shell(1, "echo out; echo err >&2"))
    outcome = only(runner)
    assert outcome.ok and outcome.exit_code == 0 and outcome.error_code == 0
    assert outcome.log == b"out\nerr\n"
    assert outcome.stdout_tail == "out\nerr\n"


def test_shell_command_failure_reports_nonzero_exit_with_exit_code_and_tail(runner):
    runner.submit(shell(1, "echo going down; exit 3"))
    outcome = only(runner)
    assert not outcome.ok and outcome.error_code == ErrorCode.PAYLOAD_NONZERO_EXIT
    assert outcome.exit_code == 3
    assert "exit code 3" in outcome.error_diag
    assert outcome.stdout_tail == "going down\n"


def test_shell_command_completes_on_systems_without_pidfd(runner, monkeypatch):
    monkeypatch.delattr(os, "pidfd_open")
    runner.submit(shell(1, "exit 5"))
    assert only(runner).exit_code == 5


def test_shell_command_killed_by_a_signal_reports_the_negative_signal_number(runner):
    runner.submit(shell(1, "kill -SEGV $$"))
    outcome = only(runner)
    assert outcome.exit_code == -signal.SIGSEGV
    assert "SIGSEGV" in outcome.error_diag


def test_shell_command_gets_payload_env_and_job_identity_and_runs_in_its_job_directory(runner, tmp_path):
    runner.submit(Payload(5, 2, "shell", command='echo "$GREETING $PANDAFLOW_JOB_ID $PANDAFLOW_ATTEMPT $PWD"',
                          env={"GREETING": "hello"}))  # fmt: skip
    outcome = only(runner)
    assert outcome.log.decode().split() == ["hello", "5", "2", str(tmp_path / "jobs" / "5.2")]


@pytest.mark.parametrize("payload", [shell(1, "seq 1 2000"), python(1, count_to, 2000)],
                         ids=["shell", "python"])  # fmt: skip
def test_log_longer_than_the_cap_keeps_the_tail_and_says_so(tmp_path, payload):
    r = PayloadRunner(1, str(tmp_path), log_cap=1000)
    r.start()
    try:
        r.submit(payload)
        outcome = only(r)
    finally:
        r.stop()
    first, rest = outcome.log.split(b"\n", 1)
    assert b"truncated" in first
    assert len(rest) == 1000 and rest.endswith(b"1999\n2000\n")


def test_running_reports_shell_payload_attempt_start_and_log_tail(runner):
    runner.submit(shell(1, "echo started; sleep 30"))
    deadline = time.monotonic() + 5
    while "started" not in runner.running()[1]["tail"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    info = runner.running()[1]
    assert info["attempt"] == 1 and info["started_at"] <= time.time()
    runner.kill(1)
    only(runner)


# ---------------------------------------------------------------- limits and failures


def test_shell_payload_over_its_memory_limit_is_killed_out_of_memory(runner):
    command = f"{sys.executable} -c 'import time; x = b\"x\" * (300 << 20); time.sleep(20)'"
    runner.submit(shell(1, command, memory_mb=100))
    outcome = only(runner, timeout=10)
    assert outcome.error_code == ErrorCode.OUT_OF_MEMORY
    assert "exceeded limit 100 MB" in outcome.error_diag
    assert outcome.max_rss_mb > 100


def test_python_payload_over_its_memory_limit_is_killed_and_the_runner_keeps_working(runner):
    runner.submit(python(1, hold_memory, 300, 20, memory_mb=200))
    outcome = only(runner, timeout=10)
    assert outcome.error_code == ErrorCode.OUT_OF_MEMORY
    assert "exceeded limit 200 MB" in outcome.error_diag
    runner.submit(python(2, add, 1, 1))
    runner.submit(python(3, add, 2, 2))
    after = collect(runner, 2)
    assert [deserialize(after[j].result) for j in (2, 3)] == [2, 4]


def test_memory_samples_are_kept_for_payloads_that_run_a_while(runner):
    runner.submit(python(1, hold_memory, 50, 0.7))
    outcome = only(runner)
    assert outcome.ok
    assert len(outcome.memory_samples) >= 2
    assert outcome.max_rss_mb >= 50 and outcome.max_pss_mb > 0
    assert all(0 < t < 2 for t, _, _ in outcome.memory_samples)


def test_walltime_exceeded_kills_the_payload_promptly(runner):
    start = time.monotonic()
    runner.submit(shell(1, "sleep 30", walltime_s=1))
    outcome = only(runner)
    assert outcome.error_code == ErrorCode.WALLTIME_EXCEEDED
    assert "walltime limit 1 s" in outcome.error_diag
    assert time.monotonic() - start < 3


def test_worker_that_dies_reports_worker_died_and_capacity_recovers(runner):
    runner.submit(python(1, exit_hard, 7))
    outcome = only(runner)
    assert outcome.error_code == ErrorCode.WORKER_DIED
    assert "exit code 7" in outcome.error_diag
    assert runner.free_slots() == 2
    runner.submit(python(2, add, 3, 4))
    runner.submit(python(3, add, 5, 6))
    after = collect(runner, 2)
    assert [deserialize(after[j].result) for j in (2, 3)] == [7, 11]


@pytest.mark.parametrize("payload", [shell(1, "sleep 30"), python(1, nap, 30)], ids=["shell", "python"])
def test_kill_on_request_ends_the_payload_with_the_given_code(runner, payload):
    runner.submit(payload)
    time.sleep(0.1)
    assert runner.kill(1, ErrorCode.KILLED_ON_REQUEST, "cancelled by user")
    outcome = only(runner, timeout=5)
    assert outcome.error_code == ErrorCode.KILLED_ON_REQUEST
    assert outcome.error_diag == "cancelled by user"
    assert runner.free_slots() == 2


def test_kill_of_a_job_that_is_not_running_returns_false(runner):
    assert runner.kill(12345) is False


# ---------------------------------------------------------------- slots, wake-up, stop


def test_payload_with_several_cores_takes_that_many_slots(runner):
    runner.submit(shell(1, "sleep 30", cores=2))
    assert runner.free_slots() == 0
    with pytest.raises(RuntimeError, match="needs 1 slots, 0 free"):
        runner.submit(python(2, add, 1, 2))
    runner.kill(1)
    only(runner)
    assert runner.free_slots() == 2


def test_submitting_a_job_that_is_already_running_raises(runner):
    runner.submit(shell(1, "sleep 30"))
    with pytest.raises(ValueError, match="already running"):
        runner.submit(shell(1, "true"))
    runner.kill(1)
    only(runner)


def test_wakeup_fd_becomes_readable_when_an_outcome_is_ready(runner):
    fd = runner.fileno_for_wakeup()
    assert fd is not None
    assert select.select([fd], [], [], 0)[0] == []
    runner.submit(python(1, add, 1, 2))
    assert select.select([fd], [], [], 5)[0] == [fd]
    assert [o.job_id for o in runner.wait(0)] == [1]


def test_wait_returns_empty_list_after_timeout_when_nothing_ends(runner):
    runner.submit(shell(1, "sleep 30"))
    start = time.monotonic()
    assert runner.wait(0.3) == []
    assert 0.25 < time.monotonic() - start < 2
    runner.kill(1)
    only(runner)


def test_stop_terminates_running_payloads_as_pilot_terminated_within_seconds(tmp_path):
    r = PayloadRunner(2, str(tmp_path))
    r.start()
    r.submit(shell(1, "sleep 30"))
    r.submit(python(2, nap, 30))
    time.sleep(0.2)
    start = time.monotonic()
    outcomes = {o.job_id: o for o in r.stop(grace=2.0)}
    assert time.monotonic() - start < 4
    assert {j: o.error_code for j, o in outcomes.items()} == {1: ErrorCode.PILOT_TERMINATED,
                                                              2: ErrorCode.PILOT_TERMINATED}  # fmt: skip
    assert r.stop() == []
