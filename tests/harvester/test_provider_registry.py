"""The provider registry: names to parsl providers, blocks checked without constructing anything,
providers built with the worker's size filled in, and jobs followed across a harvester restart."""


import pytest
from parsl.jobs.states import JobState
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider, SlurmProvider
from support.waiting import wait_until

from pandaflow import providers
from pandaflow.providers import ProviderConfigError


def test_the_registry_knows_parsls_providers_by_short_names():
    assert {"local", "slurm", "kubernetes", "pbspro", "condor"} <= set(providers.known())


def test_a_local_block_builds_parsls_local_provider_with_its_script_dir(tmp_path):
    provider = providers.build(
        {"name": "local", "launcher": "simple", "worker_init": "true"}, script_dir=str(tmp_path / "scripts")
    )
    assert isinstance(provider, LocalProvider) and isinstance(provider.launcher, SimpleLauncher)
    assert provider.script_dir == str(tmp_path / "scripts") and (tmp_path / "scripts").is_dir()
    assert provider.worker_init == "true"


def test_slurm_gets_the_workers_cores_and_memory_unless_the_block_says_otherwise(tmp_path):
    provider = providers.build(
        {"name": "slurm", "partition": "milano", "exclusive": False},
        script_dir=str(tmp_path),
        cores=4,
        memory_mb=6000,
    )
    assert isinstance(provider, SlurmProvider)
    assert (provider.cores_per_node, provider.mem_per_node, provider.partition) == (4, 6, "milano")
    explicit = providers.build(
        {"name": "slurm", "mem_per_node": None, "cores_per_node": 2},
        script_dir=str(tmp_path),
        cores=4,
        memory_mb=6000,
    )
    assert (explicit.cores_per_node, explicit.mem_per_node) == (2, None)


def test_kubernetes_pods_request_the_workers_size():
    import inspect

    from parsl.providers.kubernetes.kube import KubernetesProvider

    shape = providers.kubernetes_shape(inspect.signature(KubernetesProvider.__init__), 2, 14336)
    assert shape == {"init_cpu": 2, "max_cpu": 2, "init_mem": "14336Mi", "max_mem": "14336Mi"}


def test_validation_errors_name_where_and_the_key():
    with pytest.raises(
        ProviderConfigError, match=r"^site.json: queues\[1\].provider.walltime: expected str, got 5$"
    ):
        providers.validate({"name": "slurm", "walltime": 5}, "site.json: queues[1].provider")


def test_a_registered_class_is_usable_by_name_and_can_be_removed():
    class TinyProvider:
        def __init__(self, size: int = 1):
            self.size = size

    providers.register("tiny", TinyProvider)
    try:
        with pytest.raises(ValueError, match="already registered"):
            providers.register("tiny", TinyProvider)
        assert providers.build({"name": "tiny", "size": 3}, script_dir="/tmp").size == 3
        with pytest.raises(ProviderConfigError, match=r"provider.size: expected int, got 'big'"):
            providers.validate({"name": "tiny", "size": "big"})
    finally:
        providers.unregister("tiny")
    assert "tiny" not in providers.known()


def wait_for(provider, job_id, state, timeout=10.0):
    wait_until(lambda: provider.status([job_id])[0].state == state, timeout, f"job {job_id} to be {state}")


def test_a_new_provider_instance_follows_and_cancels_a_job_an_earlier_one_started(tmp_path, process_tag):
    first = providers.build({"name": "local"}, script_dir=str(tmp_path))
    job_id = first.submit("sleep 30", tasks_per_node=1, job_name="adopt")
    kept = providers.bookkeeping(first, job_id)
    assert set(kept) == {"script_path", "remote_pid"}
    second = providers.build({"name": "local"}, script_dir=str(tmp_path))  # a restarted harvester
    assert providers.adopt(second, job_id, kept)
    wait_for(second, job_id, JobState.RUNNING)
    assert second.cancel([job_id]) == [True]
    wait_for(second, job_id, JobState.CANCELLED)


def test_a_local_job_without_bookkeeping_cannot_be_adopted(tmp_path):
    provider = providers.build({"name": "local"}, script_dir=str(tmp_path))
    assert not providers.adopt(provider, "12345", None)
    assert not providers.adopt(object(), "12345", None)
