"""GoogleBatchProvider at the request level, offline: the real ``batch_v1`` messages it builds, the
calls it makes on a fake client with the real client's signatures, how Batch states map to
parsl's, and how a queue's provider block is checked and filled in."""

import os
import re
import shlex
import subprocess

import pytest
from google.api_core import exceptions as gexc
from google.cloud import batch_v1
from parsl.jobs.states import JobState
from test_google_batch_fake import FakeBatchClient

from pandaflow import providers
from pandaflow.providers.googlecloud import GoogleBatchProvider, job_status
from pandaflow.providers.googlecloud import jobs as gjobs

PROJECT = "rubin-idf"
PARENT = f"projects/{PROJECT}/locations/us-central1"
IMAGE = "us-central1-docker.pkg.dev/rubin-idf/pandaflow/pilot:1"
COMMAND = "python3 -m pandaflow.pilot --zmq tcp://server:8801 --queue Q --token-file /srv/h/token"
Model = batch_v1.AllocationPolicy.ProvisioningModel


def make(**kw):
    provider = GoogleBatchProvider(project=PROJECT, **kw)
    provider.client = FakeBatchClient()
    return provider


def the_job(provider, command=COMMAND, job_name="pandaflow-GOOGLE_IDF-7") -> batch_v1.Job:
    return provider.request(command, job_name).job


# ---------------------------------------------------------------- the request


def test_the_request_names_the_region_and_a_job_id_from_the_harvester_job_name():
    request = make(region="europe-west4").request(COMMAND, "pandaflow-GOOGLE_IDF_HIMEM-12")
    assert request.parent == f"projects/{PROJECT}/locations/europe-west4"
    assert request.job_id.startswith("pandaflow-google-idf-himem-12-") and len(request.job_id) == 36
    assert request.request_id  # lets Batch drop a duplicate created by a retried call


@pytest.mark.parametrize(
    "name, expected",
    [("pandaflow-GOOGLE_IDF-12", "pandaflow-google-idf-12-abc123"), ("12_x", "pilot-12-x-abc123"),
     ("", "pilot-abc123")],
)  # fmt: skip
def test_job_ids_start_with_a_letter_and_hold_lowercase_letters_digits_and_hyphens(name, expected):
    assert gjobs.job_id(name, "abc123") == expected


def test_long_job_names_are_cut_to_63_characters_keeping_the_suffix():
    long = gjobs.job_id("pandaflow-" + "X" * 80, "abc123")
    assert len(long) == 63 and long.endswith("-abc123")


def test_the_job_runs_one_task_once_with_the_queue_cores_and_memory():
    job = the_job(make(cpu=2, memory_mb=40960, boot_disk_mb=51200))
    (group,) = job.task_groups
    assert (group.task_count, group.parallelism, group.task_spec.max_retry_count) == (1, 1, 0)
    resource = group.task_spec.compute_resource
    assert (resource.cpu_milli, resource.memory_mib, resource.boot_disk_mib) == (2000, 40960, 51200)
    assert dict(group.task_spec.environment.variables) == {"PARSL_CORES": "2", "PARSL_MEMORY_GB": "40"}


def test_fractional_cores_become_millicores():
    assert the_job(make(cpu=0.5)).task_groups[0].task_spec.compute_resource.cpu_milli == 500


def test_preemptible_queues_ask_for_spot_vms_and_others_for_standard_ones():
    spot = the_job(make(preemptible=True)).allocation_policy.instances[0].policy
    standard = the_job(make()).allocation_policy.instances[0].policy
    assert (spot.provisioning_model, standard.provisioning_model) == (Model.SPOT, Model.STANDARD)


def test_a_machine_type_pins_the_vm_otherwise_batch_chooses():
    assert the_job(make(machine_type="n2-highmem-8")).allocation_policy.instances[0].policy.machine_type == (
        "n2-highmem-8"
    )
    assert the_job(make()).allocation_policy.instances[0].policy.machine_type == ""


def test_without_an_image_the_pilot_is_a_shell_script_on_the_vm():
    (runnable,) = (
        the_job(make(worker_init="source /opt/venv/bin/activate")).task_groups[0].task_spec.runnables
    )
    assert runnable.script.text == f"#!/bin/sh\nsource /opt/venv/bin/activate\n{COMMAND}"
    assert not runnable.container.image_uri


def test_with_an_image_the_pilot_is_the_containers_shell_command():
    (runnable,) = (
        the_job(make(image=IMAGE, container_options="--network host")).task_groups[0].task_spec.runnables
    )
    container = runnable.container
    assert (container.image_uri, container.entrypoint, list(container.commands)) == (
        IMAGE,
        "/bin/sh",
        ["-c", COMMAND],
    )
    assert container.options == "--network host" and not runnable.script.text


def test_walltime_is_the_tasks_max_run_duration():
    assert the_job(make(walltime_s=86400)).task_groups[0].task_spec.max_run_duration.total_seconds() == 86400
    assert not the_job(make()).task_groups[0].task_spec.max_run_duration


def test_labels_go_on_the_job_and_its_vms_with_the_job_id():
    request = make(labels={"queue": "google_idf", "site": "google_idf"}).request(COMMAND, "pandaflow-Q-1")
    expected = {"managed-by": "pandaflow", "component": "pilot", "queue": "google_idf", "site": "google_idf",
                "pandaflow-worker": request.job_id}  # fmt: skip
    assert dict(request.job.labels) == expected
    assert dict(request.job.allocation_policy.labels) == expected


@pytest.mark.parametrize(
    "labels, complaint",
    [({"Queue": "x"}, "label key 'Queue'"), ({"queue": "GOOGLE_IDF"}, "label value 'GOOGLE_IDF'"),
     ({"goog-batch": "x"}, "reserved")],
)  # fmt: skip
def test_labels_google_would_refuse_are_refused_at_construction(labels, complaint):
    with pytest.raises(ValueError, match=complaint):
        GoogleBatchProvider(project=PROJECT, labels=labels)


def test_placement_service_account_and_network_are_passed_on():
    policy = the_job(
        make(allowed_locations=["zones/us-central1-a"],
             service_account="pilot@rubin-idf.iam.gserviceaccount.com", network="global/networks/idf",
             subnetwork="regions/us-central1/subnetworks/pilots", no_external_ip=True, priority=50)
    ).allocation_policy  # fmt: skip
    assert list(policy.location.allowed_locations) == ["zones/us-central1-a"]
    assert policy.service_account.email == "pilot@rubin-idf.iam.gserviceaccount.com"
    (nic,) = policy.network.network_interfaces
    assert (nic.network, nic.subnetwork, nic.no_external_ip_address) == (
        "global/networks/idf", "regions/us-central1/subnetworks/pilots", True
    )  # fmt: skip


def test_logs_go_to_cloud_logging():
    assert the_job(make()).logs_policy.destination == batch_v1.LogsPolicy.Destination.CLOUD_LOGGING


# ---------------------------------------------------------------- the token


@pytest.mark.parametrize(
    "secret, version",
    [("pandaflow-token", f"projects/{PROJECT}/secrets/pandaflow-token/versions/latest"),
     ("projects/other/secrets/tok", "projects/other/secrets/tok/versions/latest"),
     ("projects/other/secrets/tok/versions/3", "projects/other/secrets/tok/versions/3")],
)  # fmt: skip
def test_a_secret_manager_token_is_a_secret_variable_resolved_on_the_vm(secret, version):
    environment = the_job(make(token_secret=secret)).task_groups[0].task_spec.environment
    assert dict(environment.secret_variables) == {"PANDAFLOW_TOKEN": version}
    assert "PANDAFLOW_TOKEN" not in environment.variables


def test_a_malformed_secret_name_is_refused():
    with pytest.raises(ValueError, match="not a Secret Manager name"):
        GoogleBatchProvider(project=PROJECT, token_secret="projects/p/tok")


def test_a_token_from_the_harvesters_environment_is_a_job_variable(monkeypatch):
    monkeypatch.setenv("PF_PILOT_TOKEN", "s3cret")
    environment = the_job(make(token_env="PF_PILOT_TOKEN")).task_groups[0].task_spec.environment
    assert environment.variables["PANDAFLOW_TOKEN"] == "s3cret" and not environment.secret_variables


def test_an_unset_token_variable_fails_the_submission_with_what_to_do(monkeypatch):
    monkeypatch.delenv("PF_PILOT_TOKEN", raising=False)
    provider = make(token_env="PF_PILOT_TOKEN")
    with pytest.raises(RuntimeError, match=r"\$PF_PILOT_TOKEN, which is not set .* use token_secret"):
        provider.submit(COMMAND)
    assert provider.client.calls == []


def test_the_token_is_written_where_the_pilot_command_looks_for_it():
    text = the_job(make(token_secret="tok")).task_groups[0].task_spec.runnables[0].script.text
    assert 'printf %s "$PANDAFLOW_TOKEN" > /srv/h/token' in text
    assert text.endswith(COMMAND)


def test_the_token_script_really_makes_the_file_the_pilot_reads(tmp_path):
    token_file = tmp_path / "deep" / "token"
    path = shlex.quote(str(token_file))
    command = f"cat {path}; echo; stat -c %a {path}"
    text = gjobs.script(command, gjobs.JobSettings(), gjobs.token_file(f"pilot --token-file {path} --x 1"))
    run = subprocess.run(["/bin/sh", "-c", text], env={**os.environ, "PANDAFLOW_TOKEN": "tok-1"},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert run.stdout.split() == ["tok-1", "600"]


def test_without_a_token_source_the_script_touches_no_token_file():
    text = the_job(make()).task_groups[0].task_spec.runnables[0].script.text
    assert "PANDAFLOW_TOKEN" not in text


# ---------------------------------------------------------------- submit / status / cancel


def test_submit_creates_the_job_and_returns_its_full_name():
    provider = make(preemptible=True)
    name = provider.submit(COMMAND, 1, "pandaflow-GOOGLE_IDF-7")
    (call,) = provider.client.of("create_job")
    assert name == f"{PARENT}/jobs/{call.request.job_id}"
    assert call.request.job.allocation_policy.instances[0].policy.provisioning_model == Model.SPOT
    assert call.timeout == provider.request_timeout_s
    assert provider.resources[name]["status"].state == JobState.PENDING


def test_several_tasks_per_node_run_that_many_pilots_on_the_vm():
    text = the_job(make(), command="echo hi").task_groups[0].task_spec.runnables[0].script.text
    assert text.endswith("echo hi")
    request = make().request("echo hi", "p", tasks_per_node=3)
    assert (
        request.job.task_groups[0]
        .task_spec.runnables[0]
        .script.text.endswith("for i in $(seq 3); do /bin/sh -c 'echo hi' & done; wait")
    )


def test_a_refused_submission_raises_the_apis_error():
    provider = make()
    provider.client.fail_next("create_job", gexc.PermissionDenied("Permission 'batch.jobs.create' denied"))
    with pytest.raises(gexc.PermissionDenied, match="batch.jobs.create"):
        provider.submit(COMMAND)
    assert provider.resources == {}


@pytest.mark.parametrize(
    "state, expected",
    [("QUEUED", JobState.PENDING), ("SCHEDULED", JobState.PENDING), ("RUNNING", JobState.RUNNING),
     ("SUCCEEDED", JobState.COMPLETED), ("FAILED", JobState.FAILED), ("CANCELLED", JobState.CANCELLED),
     ("CANCELLATION_IN_PROGRESS", JobState.CANCELLED), ("DELETION_IN_PROGRESS", JobState.CANCELLED),
     ("STATE_UNSPECIFIED", JobState.UNKNOWN)],
)  # fmt: skip
def test_batch_states_map_to_parsl_states(state, expected):
    provider = make()
    name = provider.submit(COMMAND)
    provider.client.move(name, state)
    (status,) = provider.status([name])
    assert status.state == expected
    assert provider.resources[name]["status"].state == expected


def test_status_asks_for_each_job_by_name():
    provider = make()
    a, b = provider.submit(COMMAND), provider.submit(COMMAND)
    provider.status([a, b])
    assert [c.request.name for c in provider.client.of("get_job")] == [a, b]


def test_a_successful_job_completes_with_exit_code_zero():
    provider = make()
    name = provider.submit(COMMAND)
    provider.client.move(name, "SUCCEEDED", exit_code=0)
    (status,) = provider.status([name])
    assert (status.state, status.exit_code) == (JobState.COMPLETED, 0)


def test_a_failed_job_carries_its_exit_code_and_last_event():
    provider = make()
    name = provider.submit(COMMAND)
    provider.client.move(name, "RUNNING")
    provider.client.move(name, "FAILED", 1, "Task state is updated from RUNNING to FAILED with exit code 1.")
    (status,) = provider.status([name])
    assert (status.state, status.exit_code) == (JobState.FAILED, 1)
    assert status.message == "Task state is updated from RUNNING to FAILED with exit code 1."


def test_a_preempted_spot_vm_is_said_so():
    status = job_status(_job_with("FAILED", 50001, "Task state is updated from RUNNING to FAILED."))
    assert (status.state, status.exit_code) == (JobState.FAILED, 50001)
    assert status.message.startswith("the spot VM was preempted: Task state is updated")


def test_running_past_the_walltime_is_a_timeout():
    status = job_status(_job_with("FAILED", 50005, ""))
    assert (status.state, status.message) == (
        JobState.TIMEOUT,
        "the task ran past max_run_duration (walltime_s)",
    )


def test_a_job_that_is_gone_is_missing():
    provider = make()
    (status,) = provider.status([f"{PARENT}/jobs/never-was"])
    assert status.state == JobState.MISSING and "no longer exists" in status.message


def test_an_outage_while_asking_for_status_raises():
    provider = make()
    name = provider.submit(COMMAND)
    provider.client.fail_next("get_job", gexc.ServiceUnavailable("try again"))
    with pytest.raises(gexc.ServiceUnavailable):
        provider.status([name])


def test_cancel_deletes_the_job():
    provider = make()
    name = provider.submit(COMMAND)
    assert provider.cancel([name]) == [True]
    assert [c.request.name for c in provider.client.of("delete_job")] == [name]
    assert provider.resources[name]["status"].state == JobState.CANCELLED
    provider.client.settle()
    assert provider.status([name])[0].state == JobState.MISSING


def test_cancelling_a_job_that_is_gone_already_succeeds():
    assert make().cancel([f"{PARENT}/jobs/gone"]) == [True]


def test_a_refused_deletion_is_false_and_the_others_go_on():
    provider = make()
    a, b = provider.submit(COMMAND), provider.submit(COMMAND)
    provider.client.fail_next("delete_job", gexc.PermissionDenied("batch.jobs.delete denied"))
    assert provider.cancel([a, b]) == [False, True]


def test_a_new_provider_instance_follows_jobs_by_name():
    first = make()
    name = first.submit(COMMAND)
    first.client.move(name, "RUNNING")
    later = GoogleBatchProvider(project=PROJECT)
    later.client = first.client
    assert providers.adopt(later, name, providers.bookkeeping(first, name))
    assert later.status([name])[0].state == JobState.RUNNING


def test_the_client_is_made_on_first_use_not_at_construction(monkeypatch):
    made = []
    monkeypatch.setattr(batch_v1, "BatchServiceClient", lambda: made.append(1) or FakeBatchClient())
    provider = GoogleBatchProvider(project=PROJECT)
    assert made == []
    provider.submit(COMMAND)
    provider.status([])
    assert made == [1]


# ---------------------------------------------------------------- queue provider blocks


def test_the_provider_is_registered_as_google_batch():
    assert "google_batch" in providers.known()
    assert providers.validate({"name": "google_batch", "project": "p", "preemptible": True})[1] == {
        "project": "p", "preemptible": True
    }  # fmt: skip


@pytest.mark.parametrize(
    "block, complaint",
    [({"name": "google_batch"}, "needs key(s) ['project']"),
     ({"name": "google_batch", "project": "p", "machinetype": "n2"}, "machinetype: unknown key"),
     ({"name": "google_batch", "project": "p", "preemptible": "yes"}, "preemptible: expected bool"),
     ({"name": "google_batch", "project": "p", "max_blocks": 3}, "max_blocks: not a harvester setting")],
)  # fmt: skip
def test_bad_blocks_are_refused_naming_the_key(block, complaint):
    with pytest.raises(providers.ProviderConfigError, match=re.escape(complaint)):
        providers.validate(block, "idf.json: queues[0].provider")


def test_build_fills_cores_and_memory_from_the_queue(tmp_path):
    provider = providers.build(
        {"name": "google_batch", "project": "p", "preemptible": True}, script_dir=str(tmp_path), cores=4,
        memory_mb=14336,
    )  # fmt: skip
    resource = provider.request("true", "p").job.task_groups[0].task_spec.compute_resource
    assert (resource.cpu_milli, resource.memory_mib) == (4000, 14336)
    assert provider.script_dir == str(tmp_path)


def test_a_block_that_sets_the_size_wins_over_the_queue(tmp_path):
    provider = providers.build(
        {"name": "google_batch", "project": "p", "cpu": 2, "memory_mb": 8192}, script_dir=str(tmp_path),
        cores=4, memory_mb=14336,
    )  # fmt: skip
    resource = provider.request("true", "p").job.task_groups[0].task_spec.compute_resource
    assert (resource.cpu_milli, resource.memory_mib) == (2000, 8192)


def _job_with(state: str, exit_code: int, description: str) -> batch_v1.Job:
    event = batch_v1.StatusEvent(
        description=description, task_execution=batch_v1.TaskExecution(exit_code=exit_code)
    )
    return batch_v1.Job(
        status=batch_v1.JobStatus(state=batch_v1.JobStatus.State[state], status_events=[event])
    )


def test_a_preemptible_queue_gives_its_provider_spot_vms_without_repeating_itself(tmp_path):
    from pandaflow import providers

    block = {"name": "google_batch", "project": "rubin-idf", "region": "us-central1", "image": "pandaflow:1"}

    def build(spot: bool):
        return providers.build(
            block, script_dir=str(tmp_path / str(spot)), cores=4, memory_mb=14000, preemptible=spot
        )

    assert (build(True).settings.spot, build(False).settings.spot) == (True, False)
