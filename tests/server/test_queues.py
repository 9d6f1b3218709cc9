import json

import pytest

from pandaflow.server.jobs.broker import Broker, BrokerageError
from pandaflow.server.jobs.queues import QueueConfigError, default_queue_file, load_queues, parse_queues

SLAC = [
    {"name": "SLAC_Rubin", "min_memory_mb": 0, "max_memory_mb": 4096, "cores": 1},
    {"name": "SLAC_Rubin_Medium", "min_memory_mb": 4096, "max_memory_mb": 8192, "cores": 1},
    {"name": "SLAC_Rubin_Himem", "min_memory_mb": 8192, "max_memory_mb": 18432, "cores": 1},
    {"name": "SLAC_Test", "min_memory_mb": 0, "max_memory_mb": 4096, "cores": 1, "brokerage": False},
    {"name": "Offline", "max_memory_mb": 500000, "status": "offline"},
]


def test_the_shipped_local_queue_file_is_valid():
    queues = load_queues(default_queue_file())
    assert [q.name for q in queues] == ["local"]


def test_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"queues": [{"name": "a", "max_memory_mb": -5}]}))
    with pytest.raises(QueueConfigError, match=r"q.json: queues\[0\].max_memory_mb: must not be negative"):
        load_queues(path)


def test_unknown_keys_are_refused_with_the_known_ones_listed():
    with pytest.raises(QueueConfigError, match=r"queues\[0\].brokrage: unknown key"):
        parse_queues([{"name": "a", "brokrage": False}], "f.json")


def test_wrong_types_and_choices_are_refused():
    with pytest.raises(QueueConfigError, match="expected bool"):
        parse_queues([{"name": "a", "brokerage": "yes"}])
    with pytest.raises(QueueConfigError, match="expected one of"):
        parse_queues([{"name": "a", "mode": "shove"}])


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"queues": [\n  {"name": "a",}\n]}')
    with pytest.raises(QueueConfigError, match="invalid JSON at line 2"):
        load_queues(path)


def test_duplicate_names_and_inverted_memory_ranges_are_refused():
    with pytest.raises(QueueConfigError, match="duplicate queue name"):
        parse_queues([{"name": "a"}, {"name": "a"}])
    with pytest.raises(QueueConfigError, match="min_memory_mb .* is above max_memory_mb"):
        parse_queues([{"name": "a", "min_memory_mb": 10, "max_memory_mb": 5}])


def test_broker_picks_the_queue_whose_memory_range_holds_the_job():
    broker = Broker(parse_queues(SLAC))
    assert broker.choose(2000, 1, None) == "SLAC_Rubin"
    assert broker.choose(4096, 1, None) == "SLAC_Rubin"
    assert broker.choose(6000, 1, None) == "SLAC_Rubin_Medium"
    assert broker.choose(16000, 1, None) == "SLAC_Rubin_Himem"
    assert broker.choose(None, 1, None) == "SLAC_Rubin"


def test_brokerage_off_queues_take_only_jobs_that_name_them():
    broker = Broker(parse_queues(SLAC))
    assert broker.choose(1000, 1, None) != "SLAC_Test"
    assert broker.choose(1000, 1, None, queue="SLAC_Test") == "SLAC_Test"


def test_a_job_no_queue_can_hold_is_refused_with_reasons():
    broker = Broker(parse_queues(SLAC))
    with pytest.raises(BrokerageError, match="no queue can hold a job with memory=100000 MB") as err:
        broker.choose(100000, 1, None)
    assert "'Offline' is offline" in str(err.value)
    with pytest.raises(BrokerageError, match="gives at most 1 cores"):
        broker.choose(1000, 4, None, queue="SLAC_Rubin")
    with pytest.raises(BrokerageError, match="unknown queue 'nope'"):
        broker.choose(1000, 1, None, queue="nope")


def test_walltime_limits_are_enforced():
    broker = Broker(parse_queues([{"name": "short", "max_walltime_s": 60, "cores": 4}]))
    assert broker.choose(None, 1, 30) == "short"
    with pytest.raises(BrokerageError, match="allows 60 s, job asks 120 s"):
        broker.choose(None, 1, 120)
