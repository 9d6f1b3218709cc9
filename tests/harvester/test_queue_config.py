"""Queue descriptions: the harvester keys and provider blocks are validated at load, with errors
naming the file and the key; the shipped SLAC and Google IDF tables are valid."""

import json
import logging
from pathlib import Path

import pytest

from pandaflow import providers
from pandaflow.server.jobs.queues import QueueConfigError, load_queues, overlap_warnings, parse_queues

QUEUE_DIR = Path(__file__).resolve().parents[2] / "pandaflow" / "configs" / "queues"
GB = 1024


def local(**extra):
    return {"name": "q", "provider": {"name": "local"}, **extra}


def write(tmp_path, *queues) -> Path:
    path = tmp_path / "site.json"
    path.write_text(json.dumps({"queues": list(queues)}))
    return path


def test_the_shipped_slac_table_has_the_memory_ranges_of_the_issue():
    queues = {q.name: q for q in load_queues(QUEUE_DIR / "slac.json")}
    ranges = {
        n: (q.min_memory_mb // GB, q.max_memory_mb // GB, q.mode, q.brokerage) for n, q in queues.items()
    }
    assert ranges == {
        "SLAC_Rubin": (0, 4, "pull", True),
        "SLAC_Rubin_Medium": (4, 8, "pull", True),
        "SLAC_Rubin_Himem": (8, 18, "pull", True),
        "SLAC_Rubin_Extra_Himem": (18, 220, "push", True),
        "SLAC_Rubin_merge": (0, 500, "push", False),
        "SLAC_Test": (0, 4, "pull", False),
    }
    assert all(q.setting("provider")["name"] == "slurm" for q in queues.values())


def test_the_shipped_google_idf_table_has_each_size_preemptible_and_not():
    queues = load_queues(QUEUE_DIR / "google_idf.json")
    sizes = sorted((q.max_memory_mb // GB, "MERGE" in q.name, q.setting("preemptible")) for q in queues)
    assert sizes == sorted(
        (size, merge, pre)
        for size, merge in [(14, False), (14, True), (40, False), (236, False)]
        for pre in (True, False)
    )
    merge = [q for q in queues if "MERGE" in q.name]
    assert all(q.setting("max_workers") == 1 and not q.brokerage for q in merge)


@pytest.mark.parametrize("name", ["slac.json", "google_idf.json", "local.json"])
def test_the_shipped_tables_have_no_overlapping_brokerage_ranges(name):
    assert overlap_warnings(load_queues(QUEUE_DIR / name)) == []


def test_an_unknown_provider_names_the_file_the_key_and_the_known_ones(tmp_path):
    path = write(tmp_path, {"name": "q", "provider": {"name": "slrum"}})
    with pytest.raises(
        QueueConfigError, match=r"site.json: queues\[0\].provider.name: unknown provider 'slrum'"
    ):
        load_queues(path)
    with pytest.raises(QueueConfigError, match="'local', .*'slurm'"):
        load_queues(path)


def test_a_provider_block_without_a_name_is_refused():
    with pytest.raises(QueueConfigError, match=r"queues\[0\].provider: missing required key 'name'"):
        parse_queues([{"name": "q", "provider": {"partition": "milano"}}], "f.json")


def test_an_unknown_provider_argument_names_the_key_and_lists_the_real_ones():
    with pytest.raises(
        QueueConfigError, match=r"f.json: queues\[0\].provider.partiton: unknown key for provider 'slurm'"
    ):
        parse_queues([{"name": "q", "provider": {"name": "slurm", "partiton": "milano"}}], "f.json")


def test_provider_arguments_must_fit_the_constructor():
    with pytest.raises(QueueConfigError, match=r"provider.exclusive: expected bool, got 'no'"):
        parse_queues([{"name": "q", "provider": {"name": "slurm", "exclusive": "no"}}], "f.json")
    with pytest.raises(QueueConfigError, match=r"provider.launcher: expected one of"):
        parse_queues([{"name": "q", "provider": {"name": "local", "launcher": "rocket"}}], "f.json")


def test_parsl_block_scaling_settings_are_refused_in_favour_of_worker_limits():
    with pytest.raises(
        QueueConfigError, match=r"provider.max_blocks: not a harvester setting: use the queue's max_workers"
    ):
        parse_queues([{"name": "q", "provider": {"name": "slurm", "max_blocks": 4}}], "f.json")


def test_a_provider_missing_a_required_argument_is_refused():
    with pytest.raises(QueueConfigError, match=r"provider 'kubernetes' needs key\(s\) \['image'\]"):
        parse_queues([{"name": "q", "provider": {"name": "kubernetes"}}], "f.json")


@pytest.mark.parametrize(
    "key", ["min_workers", "max_workers", "max_queued_workers", "submit_per_minute", "worker_idle_s", "share"]
)
def test_negative_limits_are_refused(key):
    with pytest.raises(QueueConfigError, match=rf"f.json: queues\[0\].{key}: must not be negative, got -1"):
        parse_queues([local(**{key: -1, "max_workers": 5} if key != "max_workers" else {key: -1})], "f.json")


def test_sizes_and_rates_that_cannot_work_are_refused():
    with pytest.raises(QueueConfigError, match=r"worker_cores: must be at least 1"):
        parse_queues([local(worker_cores=0)], "f.json")
    with pytest.raises(QueueConfigError, match=r"max_new_workers: must be at least 1"):
        parse_queues([local(max_new_workers=0)], "f.json")
    with pytest.raises(QueueConfigError, match=r"worker_cores: 2 is below cores \(4\)"):
        parse_queues([local(cores=4, worker_cores=2)], "f.json")


def test_min_workers_above_max_workers_is_refused_also_against_the_default():
    with pytest.raises(QueueConfigError, match=r"queues\[0\]: min_workers \(5\) is above max_workers \(2\)"):
        parse_queues([local(min_workers=5, max_workers=2)], "f.json")
    with pytest.raises(QueueConfigError, match=r"min_workers \(3\) is above max_workers \(1\)"):
        parse_queues([local(min_workers=3)], "f.json")
    with pytest.raises(QueueConfigError, match=r"max_queued_workers: 9 is above max_workers \(4\)"):
        parse_queues([local(max_workers=4, max_queued_workers=9)], "f.json")


def test_wrong_types_of_harvester_keys_name_the_key():
    with pytest.raises(QueueConfigError, match=r"queues\[0\].max_workers: expected int, got 2.5"):
        parse_queues([local(max_workers=2.5)], "f.json")
    with pytest.raises(QueueConfigError, match=r"queues\[0\].preemptible: expected bool, got 'yes'"):
        parse_queues([local(preemptible="yes")], "f.json")
    with pytest.raises(QueueConfigError, match=r"queues\[0\].provider: expected an object"):
        parse_queues([{"name": "q", "provider": "slurm"}], "f.json")


def test_worker_limits_without_a_provider_are_refused_as_a_likely_mistake():
    with pytest.raises(QueueConfigError, match=r"queues\[0\].max_workers: the queue has no 'provider'"):
        parse_queues([{"name": "q", "max_workers": 3}], "f.json")


def test_defaults_follow_the_queue_shape():
    queue = parse_queues([local(cores=4, max_memory_mb=16000, max_workers=6)])[0]
    assert queue.setting("worker_cores") == 4 and queue.setting("worker_memory_mb") == 16000
    assert queue.setting("max_queued_workers") == 6 and queue.setting("min_workers") == 0


def test_overlapping_ranges_with_brokerage_on_warn_but_load(caplog):
    queues = [
        {"name": "a", "site": "S", "max_memory_mb": 4000},
        {"name": "b", "site": "S", "min_memory_mb": 3000, "max_memory_mb": 8000},
        {"name": "c", "site": "S", "max_memory_mb": 8000, "brokerage": False},  # named only: fine
        {"name": "d", "site": "T", "max_memory_mb": 8000},  # another site: fine
        {"name": "e", "site": "S", "min_memory_mb": 8000, "max_memory_mb": 9000},  # touches b: fine
    ]
    with caplog.at_level(logging.WARNING, logger="pandaflow.server.jobs.queues"):
        loaded = parse_queues(queues, "f.json")
    assert [q.name for q in loaded] == ["a", "b", "c", "d", "e"]
    warnings = overlap_warnings(loaded, "f.json")
    assert len(warnings) == 1 and "'a' (0-4000 MB) and 'b' (3000-8000 MB) of site 'S'" in warnings[0]
    assert [r.getMessage() for r in caplog.records] == warnings


def test_every_registered_provider_can_be_described_without_a_cluster():
    for name in providers.known():
        kind = providers._REGISTRY[name]
        assert kind.cls().__name__.endswith("Provider")
