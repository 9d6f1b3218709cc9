"""PandaExecutor as parsl sees it: resource specifications, refused submissions, pilots launched
through a parsl provider, a clean shutdown, and every task recorded in the job database."""

from __future__ import annotations

import parsl
import pytest
from parsl import python_app
from parsl.executors.errors import InvalidResourceSpecification
from parsl.providers import LocalProvider
from sqlalchemy import select
from support.waiting import wait_until

from pandaflow.executors import SubmissionRefused
from pandaflow.server.store import schema as s

RESULT_TIMEOUT = 120

EVERY_KEY = {
    "cores": 1,
    "memory": 2000,
    "disk": 100,
    "running_time_min": 5,
    "priority": 7,
    "queue": "local",
    "max_attempts": 2,
    "memory_multiplier": 1.5,
    "memory_max": 3000,
}


@python_app
def add(a, b, parsl_resource_specification=None):
    return a + b


def plain_add(a, b):
    return a + b


def jobs_of(engine, client_id):
    with engine.connect() as conn:
        mine = s.jobs.c.uid.startswith(client_id + "-", autoescape=True)
        return conn.execute(select(s.jobs).where(mine).order_by(s.jobs.c.id)).all()


# ---------------------------------------------------------------- resource specification


def test_every_allowed_resource_key_is_accepted_and_recorded_on_the_job(embedded, recorded):
    executor = embedded()
    assert add(2, 3, parsl_resource_specification=EVERY_KEY).result(timeout=RESULT_TIMEOUT) == 5
    (job,) = jobs_of(recorded(executor), executor.client_id)
    assert (job.cores, job.memory_mb, job.disk_mb, job.priority, job.queue, job.max_attempts) == (
        1, 2000, 100, 7, "local", 2
    )  # fmt: skip
    assert job.walltime_s == pytest.approx(300.0)
    assert (job.memory_multiplier, job.memory_max_mb) == (1.5, 3000)


def test_an_unknown_resource_key_is_refused_by_submit_itself(started):
    with pytest.raises(InvalidResourceSpecification) as refused:
        started.submit(plain_add, {"cores": 1, "gpus": 1}, 1, 2)
    assert refused.value.invalid_keys == {"gpus"}


def test_an_unknown_resource_key_fails_the_app_future(embedded):
    embedded()
    with pytest.raises(InvalidResourceSpecification):
        add(1, 2, parsl_resource_specification={"walltime": 5}).result(timeout=RESULT_TIMEOUT)


@pytest.mark.parametrize(
    "spec",
    [
        {"cores": "2"},
        {"cores": 1.5},
        {"memory": "2GB"},
        {"memory": -1},
        {"memory": True},
        {"disk": 10.0},
        {"priority": None},
        {"max_attempts": "3"},
        {"running_time_min": "5"},
        {"running_time_min": 0},
        {"running_time_min": False},
        {"queue": 3},
        {"memory_multiplier": 0.5},
        {"memory_multiplier": "2"},
        {"memory_max": 0},
    ],
    ids=repr,
)
def test_a_resource_value_of_the_wrong_type_is_refused_by_submit(started, spec):
    with pytest.raises(InvalidResourceSpecification) as refused:
        started.submit(plain_add, spec, 1, 2)
    assert refused.value.invalid_keys == set(spec)


def test_a_task_no_queue_can_hold_fails_with_submission_refused_saying_why(started):
    future = started.submit(plain_add, {"cores": 1000}, 1, 2)
    with pytest.raises(SubmissionRefused) as refused:
        future.result(timeout=RESULT_TIMEOUT)
    assert "at most 64 cores" in str(refused.value) and "1000" in str(refused.value)


# ---------------------------------------------------------------- pilots, shutdown, records


def test_pilots_can_be_launched_through_a_parsl_provider(embedded, recorded):
    executor = embedded(provider=LocalProvider(init_blocks=1))
    assert [add(i, i).result(timeout=RESULT_TIMEOUT) for i in range(5)] == [0, 2, 4, 6, 8]
    assert list(executor._local.procs) == ["server"]  # no local pilot: the provider's pilot ran the tasks
    with recorded(executor).connect() as conn:
        assert conn.execute(select(s.pilots.c.status)).scalars().all() == ["active"]


def provider_pilots_ended(executor):
    return all(status.terminal for status in executor.provider.status(executor._local.blocks))


def test_a_provider_pilot_uses_the_executors_token_whatever_the_environment_says(embedded, monkeypatch):
    monkeypatch.setenv("PANDAFLOW_TOKEN", "the-token-of-another-server")
    executor = embedded(provider=LocalProvider(init_blocks=1))
    future = add(1, 2)
    wait_until(lambda: future.done() or provider_pilots_ended(executor), timeout=RESULT_TIMEOUT,
             what="the task to run or the pilot to give up")  # fmt: skip
    assert future.result(timeout=0) == 3


def pandaflow_processes(process_tag):
    """The test's pandaflow server and pilot processes still alive."""
    found = []
    for proc in process_tag.alive():
        try:
            command = " ".join(proc.cmdline())
        except Exception:
            continue
        if "pandaflow.server" in command or "pandaflow.pilot" in command:
            found.append(command)
    return found


@pytest.mark.parametrize("pilots", ["local", "provider"])
def test_shutdown_leaves_no_process_behind(embedded, process_tag, pilots):
    options = {"provider": LocalProvider(init_blocks=1)} if pilots == "provider" else {}
    embedded(**options)
    assert add(1, 1).result(timeout=RESULT_TIMEOUT) == 2
    assert any("pandaflow.server" in c for c in pandaflow_processes(process_tag))
    assert any("pandaflow.pilot" in c for c in pandaflow_processes(process_tag))
    parsl.dfk().cleanup()
    wait_until(lambda: not process_tag.alive(), timeout=30, what="every process of the executor to exit")


def test_every_task_is_recorded_durably_as_a_finished_job(embedded, recorded):
    executor = embedded()
    assert [f.result(timeout=RESULT_TIMEOUT) for f in [add(i, 1) for i in range(25)]] == list(range(1, 26))
    parsl.dfk().cleanup()  # the executor and its server are gone: what is left is the database
    jobs = jobs_of(recorded(executor), executor.client_id)
    assert len(jobs) == 25
    assert {j.status for j in jobs} == {"finished"}


# ---------------------------------------------------------------- out-of-memory escalation


@python_app
def hungry(megabytes, parsl_resource_specification=None):
    """Holds ``megabytes`` of memory for three seconds (long enough for the pilot's samples)."""
    import time

    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(3)
    return len(block) >> 20


def attempt_memory(engine, client_id):
    (job,) = jobs_of(engine, client_id)
    with engine.connect() as conn:
        rows = conn.execute(
            select(s.attempts.c.memory_mb, s.attempts.c.error_code)
            .where(s.attempts.c.job_id == job.id)
            .order_by(s.attempts.c.attempt)
        ).all()
    return [tuple(r) for r in rows]


@pytest.mark.slow
def test_a_task_killed_for_its_memory_is_retried_asking_more(embedded, recorded):
    executor = embedded()
    spec = {"memory": 200, "max_attempts": 3}
    assert hungry(260, parsl_resource_specification=spec).result(timeout=RESULT_TIMEOUT) == 260
    assert attempt_memory(recorded(executor), executor.client_id) == [(200, 1101), (400, 0)]


@pytest.mark.slow
def test_memory_escalation_can_be_turned_off_for_an_executor(embedded, recorded):
    executor = embedded(memory_escalation=False)
    future = hungry(260, parsl_resource_specification={"memory": 200, "max_attempts": 2})
    with pytest.raises(Exception, match="1101"):
        future.result(timeout=RESULT_TIMEOUT)
    assert attempt_memory(recorded(executor), executor.client_id) == [(200, 1101), (200, 1101)]
