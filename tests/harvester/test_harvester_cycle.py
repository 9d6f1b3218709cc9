"""One harvester cycle at a time against a real database and a provider double: demand and supply
accounting, submissions, following workers, scale-in, and failures that stay with their queue."""

import time

import pytest
from parsl.jobs.states import JobState
from sqlalchemy import select
from support.harvest import fake_queue, harvester, queue_set, register_pilot, submit_jobs
from support.lookups import worker_row

from pandaflow.harvester import accounting
from pandaflow.harvester import workers as w
from pandaflow.harvester.policy import Limits
from pandaflow.server.dispatch import assignment
from pandaflow.server.front import queries
from pandaflow.server.jobs import pilots, submission
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database


@pytest.fixture
def engine(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'h.db'}")
    yield engine
    engine.dispose()


def live_workers(engine, queue="q"):
    with engine.connect() as conn:
        return w.live(conn, queue=queue)


def status_row(engine, queue="q"):
    with engine.connect() as conn:
        return (
            conn.execute(select(s.harvester_queues).where(s.harvester_queues.c.queue == queue))
            .mappings()
            .one()
        )


# ---------------------------------------------------------------- accounting


def test_demand_is_ready_jobs_that_fit_the_queues_pilots(engine, fake_provider):
    _, broker = queue_set(
        engine, fake_queue(cores=4, worker_cores=4, max_memory_mb=8000, worker_memory_mb=8000)
    )
    submit_jobs(engine, broker, 3, cores=2, memory_mb=1000)
    submit_jobs(engine, broker, 1, cores=1)
    with engine.connect() as conn:
        snap = accounting.snapshot(conn, "q", worker_cores=2, worker_memory_mb=4000)
    assert (snap.ready_jobs, snap.ready_cores, snap.unfit_jobs) == (4, 7, 0)
    with engine.connect() as conn:
        small = accounting.snapshot(conn, "q", worker_cores=1, worker_memory_mb=500)
    assert (small.ready_jobs, small.ready_cores, small.unfit_jobs) == (1, 1, 3)


def test_supply_is_free_pilot_slots_plus_workers_without_a_pilot(engine, fake_provider):
    _, broker = queue_set(engine, fake_queue(cores=4, worker_cores=4))
    jobs = submit_jobs(engine, broker, 3, cores=1)
    now = time.time()
    with engine.begin() as conn:
        serving = w.create(conn, queue="q", harvester="h", provider="fake", cores=4, memory_mb=None, now=now)
        waiting = w.create(conn, queue="q", harvester="h", provider="fake", cores=4, memory_mb=None, now=now)
        leaving = w.create(conn, queue="q", harvester="h", provider="fake", cores=4, memory_mb=None, now=now)
    pilot_id = register_pilot(engine, serving, "p-serving", cores=4)
    gone = register_pilot(engine, leaving, "p-leaving", cores=4)
    register_pilot(engine, None, "p-by-hand", cores=2)
    with engine.begin() as conn:
        pilots.depart(conn, gone, now)
        assignment.assign(conn, pilot_id=pilot_id, queue="q", n=2, now=now)
        snap = accounting.snapshot(conn, "q", worker_cores=4, worker_memory_mb=None)
    assert len(jobs) == 3 and (snap.ready_jobs, snap.ready_cores) == (1, 1)
    # serving pilot: 4 - 2 held; hand-started pilot: 2; waiting worker: 4; departed pilot's worker: 0
    assert snap.idle_slots == 2 + 2 + 4
    assert {wk.id for wk in snap.workers if snap.pending(wk)} == {waiting}


# ---------------------------------------------------------------- submitting


def test_ready_jobs_make_the_harvester_submit_pilots_tied_to_worker_rows(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue(worker_memory_mb=3000))
    submit_jobs(engine, broker, 5)  # 5 one-core jobs, 2-core pilots: 3 workers
    h = harvester(engine, tmp_path, queues)
    report = h.cycle()["q"]
    assert len(report.submitted) == 3 and report.errors == []
    provider = fake_provider.instances[0]
    assert provider.script_dir == str((tmp_path / "h1" / "scripts" / "q").resolve())
    for worker_id, (job_id, command) in zip(report.submitted, provider.submitted, strict=True):
        row = worker_row(engine, worker_id)
        assert (row["state"], row["provider_job_id"], row["provider"], row["harvester"]) == (
            "submitted",
            job_id,
            "fake",
            "h1",
        )
        assert f"--worker-id {worker_id} " in command and "-m pandaflow.pilot" in command
        assert "--queue q --cores 2 --memory 3000 --token-file" in command
        assert "--zmq tcp://127.0.0.1:5555" in command and "--idle-timeout 660" in command
    assert (tmp_path / "h1" / "token").read_text() == "tok"
    assert h.cycle()["q"].submitted == []  # the three workers on their way cover the demand
    assert status_row(engine)["queued_workers"] == 3


def test_min_workers_are_submitted_without_work(engine, tmp_path, fake_provider):
    queues, _ = queue_set(engine, fake_queue(min_workers=2))
    assert len(harvester(engine, tmp_path, queues).cycle()["q"].submitted) == 2


def test_the_rate_limit_holds_across_cycles_and_harvesters(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue(submit_per_minute=3, worker_cores=2))
    submit_jobs(engine, broker, 20)
    assert len(harvester(engine, tmp_path, queues).cycle()["q"].submitted) == 3
    other = harvester(engine, tmp_path, queues, name="h2").cycle()["q"]
    assert other.submitted == [] and "held back by submit_per_minute" in other.action


def test_offline_queues_get_no_new_workers(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue(status="offline"))
    with engine.begin() as conn:  # jobs left from when the queue was online
        submission.store(
            conn,
            submission.validate([{"command": "true", "queue": "q"}], broker),
            submission.WorkflowBook(),
            workflow="wf",
        )
    report = harvester(engine, tmp_path, queues).cycle()["q"]
    assert report.submitted == [] and "queue is offline" in report.action


def test_queues_without_a_provider_are_left_alone(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, {"name": "manual", "cores": 2})
    submit_jobs(engine, broker, 3, queue="manual")
    assert harvester(engine, tmp_path, queues).cycle() == {}


def test_without_configured_queues_the_harvester_reads_the_servers_table(engine, tmp_path, fake_provider):
    _, broker = queue_set(engine, fake_queue())
    submit_jobs(engine, broker, 1)
    h = harvester(engine, tmp_path, None)
    assert len(h.cycle()["q"].submitted) == 1


# ---------------------------------------------------------------- following workers


def test_worker_states_follow_the_provider_and_the_pilot(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue())
    submit_jobs(engine, broker, 1)
    h = harvester(engine, tmp_path, queues)
    (worker_id,) = h.cycle()["q"].submitted
    provider = fake_provider.instances[0]
    job_id = provider.submitted[0][0]
    provider.set_state(job_id, JobState.RUNNING)
    h.cycle()
    assert (worker_row(engine, worker_id)["state"], worker_row(engine, worker_id)["batch_state"]) == (
        "running",
        "RUNNING",
    )
    register_pilot(engine, worker_id)
    provider.set_state(job_id, JobState.COMPLETED, exit_code=0)
    h.cycle()
    row = worker_row(engine, worker_id)
    assert (row["state"], row["batch_state"], row["error"]) == ("finished", "COMPLETED", "")
    assert row["ended_at"] is not None and job_id not in provider.resources  # forgotten once final


def test_a_job_that_ends_before_its_pilot_registers_is_missing_with_its_stderr(
    engine, tmp_path, fake_provider
):
    queues, broker = queue_set(engine, fake_queue())
    submit_jobs(engine, broker, 1)
    h = harvester(engine, tmp_path, queues)
    (worker_id,) = h.cycle()["q"].submitted
    stderr = tmp_path / "job.err"
    stderr.write_text("Traceback ...\nModuleNotFoundError: No module named 'pandaflow'\n")
    provider = fake_provider.instances[0]
    provider.set_state(provider.submitted[0][0], JobState.FAILED, exit_code=1, stderr_path=str(stderr))
    h.cycle()
    row = worker_row(engine, worker_id)
    assert row["state"] == "missing"
    assert "ended (failed with exit code 1) before its pilot registered" in row["error"]
    assert "No module named 'pandaflow'" in row["error"]


def test_a_pilot_that_never_arrives_is_cancelled_and_marked_missing(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue(arrival_timeout_s=1))
    submit_jobs(engine, broker, 1)
    h = harvester(engine, tmp_path, queues)
    (worker_id,) = h.cycle()["q"].submitted
    provider = fake_provider.instances[0]
    job_id = provider.submitted[0][0]
    provider.set_state(job_id, JobState.RUNNING)
    h.cycle()
    assert worker_row(engine, worker_id)["state"] == "running"
    time.sleep(1.1)
    report = h.cycle()["q"]
    row = worker_row(engine, worker_id)
    assert provider.cancelled == [job_id] and row["state"] == "missing"
    assert "its pilot did not register within 1 s of the fake job job-1 starting" in row["error"]
    assert len(report.submitted) == 1  # the job still needs a pilot: a new worker replaces it


def test_a_worker_whose_pilot_is_lost_is_cancelled_and_failed(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue())
    h = harvester(engine, tmp_path, queues)
    submit_jobs(engine, broker, 1)
    (worker_id,) = h.cycle()["q"].submitted
    provider = fake_provider.instances[0]
    provider.set_state(provider.submitted[0][0], JobState.RUNNING)
    pilot_id = register_pilot(engine, worker_id)
    with engine.begin() as conn:
        pilots.depart(conn, pilot_id, time.time(), status=pilots.LOST)
    h.cycle()
    row = worker_row(engine, worker_id)
    assert row["state"] == "failed" and "stopped heartbeating" in row["error"]
    assert provider.cancelled == [provider.submitted[0][0]]


def test_idle_pilots_are_scaled_in_by_cancelling_their_workers(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue(worker_idle_s=0.2))
    h = harvester(engine, tmp_path, queues)
    submit_jobs(engine, broker, 1)
    (worker_id,) = h.cycle()["q"].submitted
    pilot_id = register_pilot(engine, worker_id)
    with engine.begin() as conn:  # the pilot takes the job: busy
        (job,) = assignment.assign(conn, pilot_id=pilot_id, queue="q", n=5, now=time.time())
    assert h.cycle()["q"].cancelled == []
    with engine.begin() as conn:
        conn.execute(s.jobs.update().where(s.jobs.c.id == job.job_id).values(status="finished"))
    assert h.cycle()["q"].cancelled == []  # idle, but not for long yet
    time.sleep(0.3)
    report = h.cycle()["q"]
    assert report.cancelled == [worker_id] and "scaling in 1 pilots" in report.action
    row = worker_row(engine, worker_id)
    assert row["state"] == "cancelled" and row["error"].startswith("scaled in")


def test_a_second_harvester_leaves_the_first_ones_workers_alone(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue(worker_idle_s=0.01, arrival_timeout_s=1))
    submit_jobs(engine, broker, 1)
    (worker_id,) = harvester(engine, tmp_path, queues, name="h1").cycle()["q"].submitted
    with engine.begin() as conn:
        conn.execute(s.jobs.update().values(status="cancelled"))
    time.sleep(0.05)
    other = harvester(engine, tmp_path, queues, name="h2")
    other._started -= 10
    report = other.cycle()["q"]
    assert report.cancelled == [] and worker_row(engine, worker_id)["state"] == "submitted"


# ---------------------------------------------------------------- failures stay with their queue


def test_a_failing_submit_fails_the_worker_is_visible_and_spares_other_queues(
    engine, tmp_path, fake_provider
):
    queues, broker = queue_set(engine, fake_queue("broken"), fake_queue("fine"))
    submit_jobs(engine, broker, 2, queue="broken")
    submit_jobs(engine, broker, 2, queue="fine")
    h = harvester(engine, tmp_path, queues)
    h.provider(queues[0], Limits.of(queues[0]))
    broken = fake_provider.instances[0]
    broken.fail["submit"] = RuntimeError("sbatch: error: Batch job submission failed: Invalid account")
    reports = h.cycle()
    assert len(reports["fine"].submitted) == 1 and reports["fine"].errors == []
    assert "Invalid account" in h.errors["broken"]
    (failed,) = [r for r in queries.list_workers(engine.connect())["workers"] if r["queue"] == "broken"]
    assert failed["state"] == "failed" and "submit failed: RuntimeError: sbatch: error" in failed["error"]
    row = status_row(engine, "broken")
    assert "Invalid account" in row["error"] and row["error_at"] is not None
    # it backs off instead of failing every cycle
    assert "backing off" in h.cycle()["broken"].action
    broken.fail.clear()
    time.sleep(2 * h.cfg.interval + 0.05)
    again = h.cycle()["broken"]
    assert (
        len(again.submitted) == 1 and "broken" not in h.errors and status_row(engine, "broken")["error"] == ""
    )


def test_a_failing_status_is_recorded_and_the_cycle_goes_on(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue())
    submit_jobs(engine, broker, 1)
    h = harvester(engine, tmp_path, queues)
    h.cycle()
    fake_provider.instances[0].fail["status"] = OSError(
        "squeue: error: slurm_load_jobs error: Unable to contact controller"
    )
    submit_jobs(engine, broker, 4)
    report = h.cycle()["q"]
    assert "following workers failed: OSError: squeue" in report.errors[0]
    assert len(report.submitted) == 2  # supply and demand were still counted from the database


def test_a_failing_cancel_keeps_the_worker_and_says_so(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue(worker_idle_s=0.01))
    h = harvester(engine, tmp_path, queues)
    submit_jobs(engine, broker, 1)
    (worker_id,) = h.cycle()["q"].submitted
    register_pilot(engine, worker_id)
    with engine.begin() as conn:
        conn.execute(s.jobs.update().values(status="finished"))
    fake_provider.instances[0].refuse_cancel = True
    time.sleep(0.05)
    h.cycle()
    report = h.cycle()["q"]
    assert report.cancelled == [] and "could not cancel worker" in report.errors[0]
    assert worker_row(engine, worker_id)["state"] == "running"


def test_a_provider_that_cannot_be_built_is_an_error_of_its_queue_only(engine, tmp_path, fake_provider):
    class Unbuildable:
        def __init__(self):
            raise RuntimeError("kubernetes config not found")

    from pandaflow import providers

    providers.register("unbuildable", Unbuildable)
    try:
        queues, broker = queue_set(
            engine, fake_queue("k8s", provider={"name": "unbuildable"}), fake_queue("fine")
        )
        submit_jobs(engine, broker, 1, queue="k8s")
        submit_jobs(engine, broker, 1, queue="fine")
        reports = harvester(engine, tmp_path, queues).cycle()
    finally:
        providers.unregister("unbuildable")
    assert (
        "cannot set up provider 'unbuildable': RuntimeError: kubernetes config not found"
        in reports["k8s"].errors[0]
    )
    assert len(reports["fine"].submitted) == 1


def test_the_thread_survives_provider_errors_and_stops_on_request(engine, tmp_path, fake_provider):
    queues, broker = queue_set(engine, fake_queue())
    submit_jobs(engine, broker, 1)
    h = harvester(engine, tmp_path, queues)
    h.provider(queues[0], Limits.of(queues[0]))
    fake_provider.instances[0].fail.update(submit=RuntimeError("down"), status=RuntimeError("down"))
    h.start()
    deadline = time.time() + 5
    while h.cycles < 3 and time.time() < deadline:
        time.sleep(0.02)
    h.stop()
    assert h.cycles >= 3 and "down" in h.errors["q"] and not h._thread.is_alive()


def test_a_full_cycle_works_on_sqlite_and_postgresql(any_db_url, tmp_path, fake_provider):
    engine = open_database(any_db_url)
    try:
        queues, broker = queue_set(engine, fake_queue(worker_idle_s=0.01))
        submit_jobs(engine, broker, 3, cores=1, memory_mb=100)
        h = harvester(engine, tmp_path, queues)
        (first, second) = h.cycle()["q"].submitted
        provider = fake_provider.instances[0]
        provider.set_state(provider.submitted[0][0], JobState.RUNNING)
        register_pilot(engine, first)
        with engine.begin() as conn:
            conn.execute(s.jobs.update().values(status="finished"))
        provider.set_state(provider.submitted[1][0], JobState.COMPLETED)
        time.sleep(0.05)
        report = h.cycle()["q"]
        assert report.cancelled == [first] and report.errors == []
        assert worker_row(engine, second)["state"] == "missing"
        with engine.connect() as conn:
            listed = queries.list_workers(conn)
        assert [x["state"] for x in listed["workers"]] == ["missing", "cancelled"]
        assert listed["queues"][0]["action"].startswith("cancelled 1")
    finally:
        engine.dispose()


def test_workers_waiting_in_the_batch_queue_are_not_timed_out_but_unknown_ones_are(
    engine, tmp_path, fake_provider
):
    queues, broker = queue_set(engine, fake_queue(arrival_timeout_s=1, max_workers=2))
    submit_jobs(engine, broker, 4)
    h = harvester(engine, tmp_path, queues)
    pending, unknown = h.cycle()["q"].submitted
    provider = fake_provider.instances[0]
    provider.set_state(provider.submitted[1][0], JobState.UNKNOWN)
    time.sleep(1.1)
    h.cycle()
    assert worker_row(engine, pending)["state"] == "submitted"
    row = worker_row(engine, unknown)
    assert row["state"] == "missing" and "being submitted" in row["error"]
