"""GlobusComputeProvider offline: submit / status / cancel through the loopback executor (the SDK's
own packing, a real endpoint engine running the pilot function), how results and web-service
states map to parsl's, the Executor it makes, and how a queue's provider block is checked."""

import time

import pytest

pytest.importorskip("globus_compute_sdk")
pytest.importorskip("globus_compute_endpoint")

import globus_compute_sdk  # noqa: E402
from globus_compute_sdk.serialize import PureSourceTextInspect  # noqa: E402
from parsl.jobs.states import JobState  # noqa: E402
from support.waiting import wait_until  # noqa: E402
from test_globus_compute_loopback import LoopbackExecutor, endpoint_engine  # noqa: E402, F401

from pandaflow import providers  # noqa: E402
from pandaflow.providers.globus_compute import GlobusComputeProvider  # noqa: E402

ENDPOINT_ID = "5f7b0d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
WAIT_FOR_TERM = "trap 'echo draining; exit 0' TERM; echo up; while :; do sleep 0.05; done"


@pytest.fixture
def make(endpoint_engine, tmp_path):  # noqa: F811 (the fixture imported above)
    def make(*, acknowledge=True, **kw):
        kw.setdefault("state_dir", str(tmp_path / "pilots"))
        kw.setdefault("poll_s", 0.05)
        provider = GlobusComputeProvider(endpoint_id=ENDPOINT_ID, **kw)
        provider.executor = LoopbackExecutor(endpoint_engine, acknowledge=acknowledge)
        return provider

    return make


def settle(provider, job_id, timeout=60.0):
    """Wait until the pilot function has returned, then ask for its status."""
    provider.futures[job_id].exception(timeout=timeout)
    (status,) = provider.status([job_id])
    return status


def wait_running(provider, job_id, tmp_path):
    key = job_id.rpartition("/")[0]
    wait_until((tmp_path / "pilots" / f"{key}.pid").exists, 30, "the pilot to start", interval=0.02)


# ---------------------------------------------------------------- submit


def test_submit_sends_the_pilot_function_and_returns_key_and_task_id(make):
    provider = make()
    job_id = provider.submit("exit 0", 1, "pandaflow-HPC_Q-7")
    key, _, task_id = job_id.rpartition("/")
    assert key.startswith("pandaflow-HPC_Q-7-") and task_id == provider.futures[job_id].task_id
    ((name, args, kwargs),) = provider.executor.submitted
    assert (name, args) == ("run_pilot", ())
    assert kwargs["command"] == "exit 0" and kwargs["key"] == key
    assert provider.resources[job_id]["status"].state == JobState.PENDING


def test_worker_init_env_and_walltime_go_to_the_pilot_function(make):
    provider = make(worker_init="module load python", env={"X": "1"}, walltime_s=3600, cpu=8, memory_mb=16384)
    kwargs = provider.arguments("python -m pandaflow.pilot", "k")
    assert kwargs["command"] == "module load python\npython -m pandaflow.pilot"
    assert kwargs["env"] == {"PARSL_CORES": "8", "PARSL_MEMORY_GB": "16", "X": "1"}
    assert (kwargs["walltime_s"], kwargs["grace_s"]) == (3600, 120.0)


def test_submit_gives_up_when_the_web_service_never_acknowledges(make):
    provider = make(acknowledge=False, submit_timeout_s=0.1)
    with pytest.raises(TimeoutError, match="no task id within 0.1 s"):
        provider.submit("exit 0")
    assert provider.futures == {} and provider.resources == {}


def test_a_refused_submission_raises_the_sdks_error(make):
    provider = make()

    def refuse(*_a, **_k):
        raise globus_compute_sdk.errors.TaskExecutionFailed("endpoint is not online", "0")

    provider.executor.submit = refuse
    with pytest.raises(globus_compute_sdk.errors.TaskExecutionFailed, match="not online"):
        provider.submit("exit 0")


# ---------------------------------------------------------------- status


def test_a_running_pilot_is_running(make, tmp_path):
    provider = make()
    job_id = provider.submit(WAIT_FOR_TERM)
    wait_running(provider, job_id, tmp_path)
    assert provider.status([job_id])[0].state == JobState.RUNNING
    provider.cancel([job_id])


def test_a_pilot_that_exits_0_is_completed(make):
    provider = make()
    job_id = provider.submit("echo bye")
    status = settle(provider, job_id)
    assert (status.state, status.exit_code) == (JobState.COMPLETED, 0)


def test_a_pilot_that_fails_carries_its_exit_code_and_log_tail(make):
    provider = make()
    job_id = provider.submit("echo 'cannot reach server' >&2; exit 2")
    status = settle(provider, job_id)
    assert (status.state, status.exit_code) == (JobState.FAILED, 2)
    assert status.message.endswith("log ends: cannot reach server")


def test_a_pilot_past_its_walltime_is_a_timeout(make):
    provider = make(walltime_s=0.2, stop_grace_s=5)
    job_id = provider.submit("sleep 30")
    assert settle(provider, job_id).state == JobState.TIMEOUT


def test_an_exception_on_the_endpoint_fails_the_job_with_its_message(make):
    provider = make(state_dir="/proc/no/such/dir")
    job_id = provider.submit("true")
    status = settle(provider, job_id)
    assert status.state == JobState.FAILED and status.message.startswith("TaskExecutionFailed: ")


def test_web_service_states_of_unfinished_tasks(make):
    provider = make()
    job_id = provider.submit(WAIT_FOR_TERM)
    task_id = job_id.rpartition("/")[2]
    provider.executor.started.discard(task_id)
    status = provider.status([job_id])[0]
    assert (status.state, status.message) == (JobState.PENDING, "waiting-for-ep")
    provider.cancel([job_id])


def test_an_unreachable_web_service_makes_states_unknown(make):
    provider = make()
    job_id = provider.submit(WAIT_FOR_TERM)
    provider.executor.client.fail_with = ConnectionError("no route to compute.api.globus.org")
    (status,) = provider.status([job_id])
    assert status.state == JobState.UNKNOWN and "ConnectionError: no route" in status.message
    provider.executor.client.fail_with = None
    provider.cancel([job_id])


def test_a_restarted_harvester_follows_pilots_through_the_web_service(make):
    first = make()
    job_id = first.submit("echo done")
    first.futures[job_id].result(timeout=60)
    later = GlobusComputeProvider(endpoint_id=ENDPOINT_ID, state_dir=first.state_dir)
    later.executor = first.executor  # the same web service
    assert providers.adopt(later, job_id, providers.bookkeeping(first, job_id))
    assert later.status([job_id])[0].state == JobState.COMPLETED


# ---------------------------------------------------------------- cancel


def test_cancel_asks_a_running_pilot_to_stop_and_it_drains(make, tmp_path):
    provider = make()
    job_id = provider.submit(WAIT_FOR_TERM)
    wait_running(provider, job_id, tmp_path)
    assert provider.cancel([job_id]) == [True]
    assert [s[0] for s in provider.executor.submitted] == ["run_pilot", "stop_pilot"]
    assert provider.resources[job_id]["status"].state == JobState.CANCELLED
    key = job_id.rpartition("/")[0]
    deadline = time.monotonic() + 30
    while (tmp_path / "pilots" / f"{key}.pid").exists():  # the pilot function cleans up as it returns
        assert time.monotonic() < deadline, "the pilot did not stop"
        time.sleep(0.02)
    assert "draining" in (tmp_path / "pilots" / f"{key}.log").read_text()


def test_cancelling_a_finished_pilot_succeeds_without_asking(make):
    provider = make()
    job_id = provider.submit("true")
    provider.futures[job_id].result(timeout=60)
    assert provider.cancel([job_id]) == [True]
    assert [s[0] for s in provider.executor.submitted] == ["run_pilot"]


# ---------------------------------------------------------------- the real Executor, and queue blocks


def test_the_executor_is_made_on_first_use_for_the_endpoint_with_source_serialization(monkeypatch):
    made = []

    class Recording:
        def __init__(self, **kwargs):
            made.append(kwargs)
            self.serializer = None

    monkeypatch.setattr(globus_compute_sdk, "Executor", Recording)
    provider = GlobusComputeProvider(
        endpoint_id=ENDPOINT_ID, user_endpoint_config={"ACCOUNT": "rubin", "PARTITION": "milano"},
        size_variables={"cores": "CORES_PER_NODE", "memory_gb": "MEM_PER_NODE"}, cpu=16, memory_mb=65536,
        amqp_port=443,
    )  # fmt: skip
    assert made == []
    executor = provider.executor
    assert made == [{
        "endpoint_id": ENDPOINT_ID, "resource_specification": None, "amqp_port": 443,
        "label": "globus_compute",
        "user_endpoint_config": {"ACCOUNT": "rubin", "PARTITION": "milano", "CORES_PER_NODE": 16,
                                 "MEM_PER_NODE": 64},
    }]  # fmt: skip
    assert isinstance(executor.serializer.code_serializer, PureSourceTextInspect)
    assert provider.executor is executor


def test_the_provider_is_registered_and_filled_in_from_the_queue(tmp_path):
    block = {"name": "globus_compute", "endpoint_id": ENDPOINT_ID, "size_variables": {"cores": "CORES"}}
    provider = providers.build(block, script_dir=str(tmp_path), cores=4, memory_mb=8192)
    assert provider.user_endpoint_config == {"CORES": 4}
    assert provider.env == {"PARSL_CORES": "4", "PARSL_MEMORY_GB": "8"}


@pytest.mark.parametrize(
    "block, complaint",
    [({"name": "globus_compute"}, "needs key(s) ['endpoint_id']"),
     ({"name": "globus_compute", "endpoint_id": "x", "user_endpoint_config": "rubin"},
      "user_endpoint_config: expected"),
     ({"name": "globus_compute", "endpoint_id": "x", "endpoint": "y"}, "endpoint: unknown key")],
)  # fmt: skip
def test_bad_blocks_are_refused_naming_the_key(block, complaint):
    with pytest.raises(providers.ProviderConfigError) as raised:
        providers.validate(block, "hpc.json: queues[0].provider")
    assert complaint in str(raised.value)


def test_unknown_size_variables_are_refused():
    with pytest.raises(ValueError, match=r"size_variables: unknown key\(s\) \['gpus'\]"):
        GlobusComputeProvider(endpoint_id=ENDPOINT_ID, size_variables={"gpus": "GPUS"})
