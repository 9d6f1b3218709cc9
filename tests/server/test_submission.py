import pytest
from sqlalchemy import func, select

from pandaflow.server.jobs.broker import Broker
from pandaflow.server.jobs.queues import parse_queues
from pandaflow.server.jobs.submission import SubmissionError, WorkflowBook, store, validate
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database


@pytest.fixture
def engine(tmp_path):
    eng = open_database(f"sqlite:///{tmp_path / 'sub.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def broker():
    return Broker(
        parse_queues(
            [
                {"name": "small", "max_memory_mb": 4000, "cores": 2},
                {"name": "big", "min_memory_mb": 4000, "max_memory_mb": 64000, "cores": 8},
            ]
        )
    )


def count_jobs(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(s.jobs)).scalar()


def test_valid_jobs_are_stored_ready_and_brokered(engine, broker):
    jobs = [
        {"command": "echo a", "memory_mb": 1000},
        {"command": "echo b", "memory_mb": 8000, "task": "merge"},
    ]
    with engine.begin() as conn:
        out = store(conn, validate(jobs, broker), WorkflowBook(), workflow="w")
    assert len(out.accepted) == 2
    with engine.connect() as conn:
        rows = conn.execute(select(s.jobs.c.status, s.jobs.c.queue).order_by(s.jobs.c.id)).all()
    assert rows == [("ready", "small"), ("ready", "big")]


def test_one_bad_job_refuses_the_whole_batch_and_names_it(engine, broker):
    jobs = [{"command": "echo ok"}, {"name": "huge", "command": "x", "memory_mb": 10**6}, {"kind": "python"}]
    with pytest.raises(SubmissionError) as err:
        validate(jobs, broker)
    assert any("jobs[1] (huge)" in p and "no queue can hold" in p for p in err.value.problems)
    assert any("jobs[2]" in p and "needs 'buffer'" in p for p in err.value.problems)
    assert "nothing was stored" in str(err.value)
    assert count_jobs(engine) == 0


@pytest.mark.parametrize(
    "job,message",
    [
        ({"command": ""}, r"jobs\[0\].command: expected a non-empty command string, got ''"),
        ({"command": "x", "cores": 0}, r"jobs\[0\].cores: expected an integer of at least 1, got 0"),
        ({"command": "x", "cores": "2"}, r"jobs\[0\].cores: expected an integer of at least 1, got '2'"),
        ({"command": "x", "cores": 2.5}, r"jobs\[0\].cores: expected an integer of at least 1, got 2.5"),
        ({"command": "x", "cores": 2**31}, "cores: expected an integer from 1 to 2147483647, got 2147483648"),
        ({"command": "x", "walltime_s": -1}, "walltime_s: expected a positive number of seconds, got -1"),
        ({"command": "x", "env": {"A": 1}}, r"jobs\[0\].env.A: expected a string, got 1"),
        ({"command": "x", "colour": 1}, r"jobs\[0\].colour: unknown field; known fields: command, env"),
        ({"kind": "shell"}, "a shell job needs a non-empty 'command' string"),
        ({"kind": "python", "command": "x"}, "a python job needs 'buffer'"),
        ({"command": "x", "kind": "java"}, r"kind: expected one of 'shell', 'python', got 'java'"),
        ({"command": "x", "inputs": "raw"}, r"inputs: expected a list of names .*, got 'raw'"),
    ],
)
def test_field_errors_say_what_is_wrong(broker, job, message):
    with pytest.raises(SubmissionError, match=message):
        validate([job], broker)


def test_resubmitting_the_same_uids_is_idempotent(engine, broker):
    jobs = [{"uid": "u1", "command": "echo"}, {"uid": "u2", "command": "echo"}]
    book = WorkflowBook()
    with engine.begin() as conn:
        first = store(conn, validate(jobs, broker), book, workflow="w", client="c")
    with engine.begin() as conn:
        again = store(conn, validate(jobs, broker), book, workflow="w", client="c")
    assert again.accepted == [] and again.duplicates == ["u1", "u2"]
    assert again.ids == first.ids
    assert count_jobs(engine) == 2


def test_duplicate_uids_within_one_submission_are_refused(broker):
    with pytest.raises(SubmissionError, match="duplicate uid"):
        validate([{"uid": "a", "command": "x"}, {"uid": "a", "command": "y"}], broker)


def test_jobs_of_one_label_share_a_task(engine, broker):
    jobs = [
        {"command": "x", "task": "isr"},
        {"command": "y", "task": "isr"},
        {"command": "z", "task": "calib"},
    ]
    with engine.begin() as conn:
        store(conn, validate(jobs, broker), WorkflowBook(), workflow="w")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.tasks)).scalar() == 2
