"""Scaling decisions: how many workers to submit and which to cancel, from demand and supply."""

from pandaflow.harvester import workers as w
from pandaflow.harvester.accounting import Snapshot
from pandaflow.harvester.policy import Limits, decide
from pandaflow.server.jobs.demand import PilotView
from pandaflow.server.jobs.queues import parse_queues

ME = "harvester-1"


def worker(id, state="submitted", pilot_id=None, cores=1, submitted_at=0.0, harvester=ME):
    return w.Worker(
        id, "q", harvester, "fake", f"job-{id}", None, state, None, cores, pilot_id, submitted_at, None
    )


def snap(ready_cores=0, ready_jobs=None, workers=(), pilots=()):
    s = Snapshot("q", ready_jobs=ready_cores if ready_jobs is None else ready_jobs, ready_cores=ready_cores)
    s.workers = list(workers)
    s.pilots = {p.id: p for p in pilots}
    return s


def pilot(id, cores=1, held=0):
    return PilotView(id, cores, held, 0, 0.0)


def limits(**kw):
    return Limits(**{"max_workers": 100, "max_queued_workers": 100, "max_new_workers": 100, **kw})


def test_limits_come_from_the_queue_with_its_defaults():
    queue = parse_queues(
        [
            {
                "name": "q",
                "cores": 4,
                "max_memory_mb": 8000,
                "provider": {"name": "local"},
                "max_workers": 10,
                "submit_per_minute": 30,
            }
        ]
    )[0]
    assert Limits.of(queue) == Limits(
        min_workers=0,
        max_workers=10,
        max_queued_workers=10,
        max_new_workers=5,
        submit_per_minute=30,
        worker_cores=4,
        worker_memory_mb=8000,
        worker_idle_s=300,
        arrival_timeout_s=600,
    )


def test_no_work_and_no_minimum_means_no_workers():
    assert decide(limits(), snap(), harvester=ME).submit == 0


def test_ready_cores_are_covered_by_whole_workers():
    assert decide(limits(worker_cores=4), snap(ready_cores=9), harvester=ME).submit == 3


def test_free_slots_of_pilots_and_workers_on_their_way_count_as_supply():
    supply = snap(ready_cores=10, workers=[worker(1, cores=4)], pilots=[pilot(7, cores=4, held=1)])
    # 10 ready cores - (3 free on the pilot + 4 coming) = 3 -> one more 4-core worker
    assert supply.idle_slots == 7
    assert decide(limits(worker_cores=4), supply, harvester=ME).submit == 1


def test_min_workers_are_kept_even_without_work():
    decision = decide(limits(min_workers=3), snap(workers=[worker(1)]), harvester=ME)
    assert decision.submit == 2 and "min_workers is 3" in decision.reason


def test_max_workers_caps_live_workers():
    decision = decide(
        limits(max_workers=5), snap(ready_cores=50, workers=[worker(i) for i in range(4)]), harvester=ME
    )
    assert decision.submit == 1 and "held back by max_workers" in decision.reason


def test_max_queued_workers_caps_workers_waiting_in_the_batch_system():
    workers = [worker(1), worker(2), worker(3, state="running", pilot_id=9)]
    decision = decide(
        limits(max_queued_workers=3),
        snap(ready_cores=50, workers=workers, pilots=[pilot(9, held=1)]),
        harvester=ME,
    )
    assert decision.submit == 1


def test_max_new_workers_caps_one_cycle():
    assert decide(limits(max_new_workers=4), snap(ready_cores=50), harvester=ME).submit == 4


def test_the_submission_rate_counts_recent_submissions():
    decision = decide(limits(submit_per_minute=10), snap(ready_cores=50), harvester=ME, recent_submissions=7)
    assert decision.submit == 3 and "held back by submit_per_minute" in decision.reason
    assert (
        decide(limits(submit_per_minute=10), snap(ready_cores=50), harvester=ME, recent_submissions=12).submit
        == 0
    )


def test_rates_below_one_a_minute_mean_one_per_longer_window():
    assert limits(submit_per_minute=0.5).rate_window() == (1, 120.0)
    assert limits(submit_per_minute=0).rate_window() is None


def test_idle_pilots_are_scaled_in_longest_idle_first_down_to_min_workers():
    workers = [worker(i, state="running", pilot_id=10 + i) for i in range(1, 5)]
    pilots = [pilot(10 + i) for i in range(1, 5)]
    idle = {11: 400.0, 12: 900.0, 13: 100.0, 14: 600.0}
    decision = decide(
        limits(min_workers=2, worker_idle_s=300),
        snap(workers=workers, pilots=pilots),
        harvester=ME,
        pilot_idle_s=idle,
    )
    assert decision.cancel == [2, 4]  # idle 900 s and 600 s; worker 1 (400 s) stays for min_workers


def test_pilots_holding_jobs_or_recently_busy_are_kept():
    workers = [worker(1, state="running", pilot_id=11), worker(2, state="running", pilot_id=12)]
    decision = decide(
        limits(worker_idle_s=300),
        snap(workers=workers, pilots=[pilot(11, held=1), pilot(12)]),
        harvester=ME,
        pilot_idle_s={11: 1000.0, 12: 10.0},
    )
    assert decision.cancel == []


def test_nothing_is_scaled_in_while_the_queue_has_ready_work():
    workers = [worker(1, state="running", pilot_id=11)]
    decision = decide(
        limits(worker_cores=2),
        snap(ready_cores=1, workers=workers, pilots=[pilot(11, cores=2, held=2)]),
        harvester=ME,
        pilot_idle_s={11: 1000.0},
        quiet_s=1000.0,
    )
    assert decision.cancel == []


def test_queued_workers_are_cancelled_newest_first_once_the_queue_has_been_quiet():
    workers = [worker(1, submitted_at=10.0), worker(2, submitted_at=30.0), worker(3, submitted_at=20.0)]
    early = decide(
        limits(min_workers=1, worker_idle_s=300), snap(workers=workers), harvester=ME, quiet_s=100.0
    )
    assert early.cancel == []
    late = decide(
        limits(min_workers=1, worker_idle_s=300), snap(workers=workers), harvester=ME, quiet_s=400.0
    )
    assert late.cancel == [2, 3]


def test_worker_idle_zero_never_scales_in():
    workers = [worker(1, state="running", pilot_id=11)]
    decision = decide(
        limits(worker_idle_s=0),
        snap(workers=workers, pilots=[pilot(11)]),
        harvester=ME,
        pilot_idle_s={11: 1e6},
        quiet_s=1e6,
    )
    assert decision.cancel == []


def test_a_harvester_cancels_only_its_own_workers():
    workers = [
        worker(1, state="running", pilot_id=11, harvester="other"),
        worker(2, submitted_at=5.0, harvester="other"),
    ]
    decision = decide(
        limits(worker_idle_s=1),
        snap(workers=workers, pilots=[pilot(11)]),
        harvester=ME,
        pilot_idle_s={11: 100.0},
        quiet_s=100.0,
    )
    assert decision.cancel == []
