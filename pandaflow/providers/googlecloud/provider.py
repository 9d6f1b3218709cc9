"""``GoogleBatchProvider``: pilots as Google Cloud Batch jobs, through ``google.cloud.batch_v1``."""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import batch_v1
from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider

from pandaflow.providers.googlecloud import jobs
from pandaflow.providers.script import block_script

log = logging.getLogger(__name__)

_STATE = batch_v1.JobStatus.State
_STATES = {
    _STATE.QUEUED: (JobState.PENDING, "queued"),
    _STATE.SCHEDULED: (JobState.PENDING, "scheduled: VMs are being provisioned"),
    _STATE.RUNNING: (JobState.RUNNING, None),
    _STATE.SUCCEEDED: (JobState.COMPLETED, None),
    _STATE.FAILED: (JobState.FAILED, None),
    _STATE.CANCELLATION_IN_PROGRESS: (JobState.CANCELLED, "being cancelled"),
    _STATE.CANCELLED: (JobState.CANCELLED, None),
    _STATE.DELETION_IN_PROGRESS: (JobState.CANCELLED, "being deleted"),
}
# Exit codes Batch itself gives a task (cloud.google.com/batch/docs/troubleshooting).
_BATCH_EXIT_CODES = {
    50001: "the spot VM was preempted",
    50002: "the VM stopped reporting to Batch",
    50003: "the VM rebooted while the task ran",
    50004: "the VM and task stopped responding",
    50005: "the task ran past max_run_duration (walltime_s)",
    50006: "the VM was recreated while the task ran",
}
_TIMEOUT_EXIT = 50005


class GoogleBatchProvider(ExecutionProvider):
    """Start each pilot as a Google Cloud Batch job of one task, in ``project``/``region``.

    The parsl contract (``parsl/providers/base.py``), through Google's client library::

        submit(command, tasks_per_node, job_name) -> job name     create_job(CreateJobRequest)
            ("projects/P/locations/R/jobs/<id>")
        status([name, ...]) -> [JobStatus, ...]                   get_job(name), one per job
        cancel([name, ...]) -> [bool, ...]                        delete_job(name) (its VMs go too)

    States: QUEUED and SCHEDULED (VMs being provisioned) are PENDING, RUNNING is RUNNING,
    SUCCEEDED is COMPLETED, FAILED is FAILED (TIMEOUT when the task ran past ``walltime_s``,
    Batch's exit code 50005), CANCELLED and a job being cancelled or deleted are CANCELLED; a job
    that no longer exists is MISSING. The exit code and the last status event (e.g. "the spot VM
    was preempted", exit code 50001) come with the status.

    Sizes: ``cpu`` (cores) and ``memory_mb`` are the task's ``cpu_milli`` and ``memory_mib``; the
    harvester fills both from the queue (``worker_cores``, ``worker_memory_mb``). ``machine_type``
    pins the VM type (e.g. ``n2-highmem-8``), else Batch picks one that fits. ``preemptible``
    asks for SPOT VMs, STANDARD otherwise; set it like the queue's own ``preemptible``.

    The pilot runs ``/bin/sh -c '<token file>; <worker_init>; <command>'`` as a script on the VM,
    or as the entry point of ``image`` when one is given. Its token comes from Secret Manager
    (``token_secret``: a secret name, resolved on the VM by Batch with the job's
    ``service_account``) or else from the harvester's environment variable ``token_env`` (sent
    as a plain job variable: anyone who can read the job can read it). The pilot gets it as
    ``PANDAFLOW_TOKEN``, and the script writes it to the file the command's ``--token-file``
    names (the harvester's own path, which does not exist on a fresh VM), or to ``token_path``.

    Credentials are Application Default Credentials unless ``credentials_file`` names a service
    account key; the client is made on first use, so building the provider needs no network.
    """

    def __init__(
        self,
        project: str,
        region: str = "us-central1",
        machine_type: str | None = None,
        cpu: float = 1,
        memory_mb: int | None = None,
        boot_disk_mb: int | None = None,
        preemptible: bool = False,
        image: str | None = None,
        container_options: str = "",
        token_secret: str | None = None,
        token_env: str | None = None,
        token_path: str | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        worker_init: str = "",
        walltime_s: int | None = None,
        allowed_locations: list[str] | None = None,
        service_account: str | None = None,
        network: str | None = None,
        subnetwork: str | None = None,
        no_external_ip: bool = False,
        priority: int = 0,
        credentials_file: str | None = None,
        request_timeout_s: float = 60.0,
        label: str = "google_batch",
    ) -> None:
        if cpu <= 0:
            raise ValueError(f"cpu must be positive, got {cpu}")
        if memory_mb is not None and memory_mb <= 0:
            raise ValueError(f"memory_mb must be positive, got {memory_mb}")
        self.project, self.region = project, region
        self.parent = f"projects/{project}/locations/{region}"
        self.token_env = token_env
        self.token_path = token_path
        self._token_given = bool(token_secret or token_env)
        self.credentials_file = credentials_file
        self.request_timeout_s = request_timeout_s
        self._label = label
        self.cores_per_node: int | None = int(cpu) if float(cpu).is_integer() else None
        self.mem_per_node: float | None = memory_mb / 1024 if memory_mb else None
        env = dict(env or {})
        env.setdefault("PARSL_CORES", f"{cpu:g}")
        if memory_mb:
            env.setdefault("PARSL_MEMORY_GB", f"{memory_mb / 1024:g}")
        self.settings = jobs.JobSettings(
            machine_type=machine_type,
            cpu_milli=round(cpu * 1000),
            memory_mib=memory_mb,
            boot_disk_mib=boot_disk_mb,
            spot=preemptible,
            image=image,
            container_options=container_options,
            env=env,
            secret_variables=(
                {jobs.TOKEN_VARIABLE: jobs.secret_version(token_secret, project)} if token_secret else {}
            ),
            worker_init=worker_init,
            walltime_s=walltime_s,
            labels={**jobs.COMPONENT, **jobs.check_labels(labels or {})},
            allowed_locations=list(allowed_locations or []),
            service_account=service_account,
            network=network,
            subnetwork=subnetwork,
            no_external_ip=no_external_ip,
            priority=priority,
        )
        self._client: Any = None
        # parsl's provider attributes; the harvester scales, so blocks stay at one pilot.
        self.min_blocks, self.max_blocks, self.init_blocks = 0, 1, 0
        self.nodes_per_block, self.parallelism = 1, 1.0
        self.script_dir: str | None = None
        self.resources: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- the client
    @property
    def client(self) -> Any:
        """The ``batch_v1.BatchServiceClient`` (made on first use); tests set a fake here."""
        if self._client is None:
            if self.credentials_file:
                self._client = batch_v1.BatchServiceClient.from_service_account_file(self.credentials_file)
            else:
                self._client = batch_v1.BatchServiceClient()
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    # ---------------------------------------------------------------- parsl's interface
    @property
    def label(self) -> str:
        return self._label

    @property
    def status_polling_interval(self) -> int:
        return 60

    def request(self, command: str, job_name: str, tasks_per_node: int = 1) -> batch_v1.CreateJobRequest:
        """The ``CreateJobRequest`` :meth:`submit` sends for ``command``, with a fresh job id."""
        script = block_script(command, tasks_per_node)
        name = jobs.job_id(job_name, secrets.token_hex(3))
        return batch_v1.CreateJobRequest(
            parent=self.parent,
            job_id=name,
            job=jobs.job(script, name, self.settings, self._token_variables(), self._token_path(command)),
            # Lets the service drop a duplicate if the client library retries the call.
            request_id=str(uuid.uuid4()),
        )

    def submit(self, command: str, tasks_per_node: int = 1, job_name: str = "pandaflow-pilot") -> str:
        """Create the pilot's job; returns its full name (``projects/P/locations/R/jobs/ID``), the job
        id. Raises the client library's ``GoogleAPICallError`` when Batch refuses (quota,
        permissions, an unknown machine type)."""
        request = self.request(command, job_name, tasks_per_node)
        created = self.client.create_job(request=request, timeout=self.request_timeout_s)
        name = getattr(created, "name", "") or f"{self.parent}/jobs/{request.job_id}"
        self.resources[name] = {"job_id": name, "status": JobStatus(JobState.PENDING)}
        log.debug("google batch: created %s", name)
        return name

    def status(self, job_ids: Sequence[object]) -> list[JobStatus]:
        """The state of each job (one ``get_job`` each); a job that is gone is MISSING."""
        found = []
        for job_id in job_ids:
            name = str(job_id)
            try:
                status = job_status(self.client.get_job(name=name, timeout=self.request_timeout_s))
            except gexc.NotFound:
                status = JobStatus(JobState.MISSING, f"Batch job {name} no longer exists")
            if name in self.resources:
                self.resources[name]["status"] = status
            found.append(status)
        return found

    def cancel(self, job_ids: Sequence[object]) -> list[bool]:
        """Delete each job (Batch stops its task and VMs); True once deletion is under way, or when
        the job was gone already. Does not wait for the deletion to finish."""
        done = []
        for job_id in job_ids:
            name = str(job_id)
            try:
                self.client.delete_job(name=name, timeout=self.request_timeout_s)
            except gexc.NotFound:
                pass
            except gexc.GoogleAPICallError as exc:
                log.warning("google batch: cannot delete %s: %s", name, exc)
                done.append(False)
                continue
            if name in self.resources:
                self.resources[name]["status"] = JobStatus(JobState.CANCELLED)
            done.append(True)
        return done

    # ---------------------------------------------------------------- helpers
    def _token_path(self, command: str) -> str | None:
        if not self._token_given:
            return None
        return self.token_path or jobs.token_file(command)

    def _token_variables(self) -> dict[str, str]:
        if not self.token_env or self.settings.secret_variables:
            return {}
        token = os.environ.get(self.token_env)
        if not token:
            raise RuntimeError(
                f"token_env names ${self.token_env}, which is not set in the harvester's environment; "
                "export the server token there or use token_secret"
            )
        return {jobs.TOKEN_VARIABLE: token}


def job_status(job: batch_v1.Job) -> JobStatus:
    """parsl's view of a Batch job: its state, the exit code and the last status event."""
    state, note = _STATES.get(job.status.state, (JobState.UNKNOWN, None))
    exit_code, event = None, None
    for e in job.status.status_events:  # oldest first
        event = e.description or event
        if e.task_execution and e.task_execution.exit_code:
            exit_code = e.task_execution.exit_code
    if state == JobState.COMPLETED:
        return JobStatus(state, exit_code=exit_code or 0)
    why = _BATCH_EXIT_CODES.get(exit_code) if exit_code is not None else None
    if state == JobState.FAILED and exit_code == _TIMEOUT_EXIT:
        state = JobState.TIMEOUT
    message = ": ".join(x for x in (why, event) if x) or note
    return JobStatus(state, message, exit_code=exit_code)
