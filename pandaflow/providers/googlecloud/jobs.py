"""The request a pilot becomes on Google Cloud Batch: one ``batch_v1.Job`` of one task.

Pure functions of the provider's settings, so tests compare the real protobuf messages field by
field. A pilot job:

* runs one task (``task_count=1``, ``max_retry_count=0``): a failed or preempted pilot is
  replaced by the harvester, not retried in place by Batch;
* asks for the queue's cores and memory (``cpu_milli``, ``memory_mib``) on a ``machine_type``
  when one is named (else Batch picks one that fits), ``SPOT`` VMs for preemptible queues;
* runs ``/bin/sh`` with the pilot command, either as a script on the VM or as the entry point of
  a container (``image``);
* gets the server token from Secret Manager (``secret_variables``, resolved on the VM with the
  job's service account, never seen by Batch's API) or, failing that, as a plain variable; the
  script writes it to the file the pilot's ``--token-file`` names;
* carries labels (job, VMs and disks), so pilots can be found and billed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.cloud import batch_v1
from google.protobuf import duration_pb2

TOKEN_VARIABLE = "PANDAFLOW_TOKEN"
WORKER_LABEL = "pandaflow-worker"  # the job's own id, so its VMs can be found
COMPONENT = {"managed-by": "pandaflow", "component": "pilot"}

_JOB_ID = re.compile(r"[^a-z0-9-]+")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_SECRET = re.compile(r"^projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?$")


def job_id(job_name: str, suffix: str, limit: int = 63) -> str:
    """A Batch job id from a harvester job name (``pandaflow-GOOGLE_IDF-12`` ->
    ``pandaflow-google-idf-12-<suffix>``): lowercase letters, digits and hyphens, starting with a
    letter, at most 63 characters (so it is a valid label value too)."""
    base = _JOB_ID.sub("-", job_name.lower()).strip("-")
    if not base or not base[0].isalpha():
        base = f"pilot-{base}".rstrip("-")
    base = base[: limit - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def check_labels(labels: Mapping[str, str], where: str = "labels") -> dict[str, str]:
    """Google Cloud label rules (lowercase key starting with a letter, values of lowercase letters,
    digits, ``_`` and ``-``, 63 characters at most); names that Batch reserves are refused."""
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise ValueError(
                f"{where}: label key {key!r} must be lowercase letters, digits, '_' or '-', start with a "
                "letter and be at most 63 characters"
            )
        if key.startswith(("goog-", "google-")):
            raise ValueError(f"{where}: label key {key!r} is reserved for Google's own labels")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ValueError(
                f"{where}: label value {value!r} (of {key!r}) must be lowercase letters, digits, '_' or "
                "'-', at most 63 characters"
            )
    return dict(labels)


def secret_version(secret: str, project: str) -> str:
    """A Secret Manager version name from ``name``, ``projects/P/secrets/S`` or a full version name
    (``projects/P/secrets/S/versions/V``); a version left out is ``latest``."""
    if "/" not in secret:
        secret = f"projects/{project}/secrets/{secret}"
    if not _SECRET.match(secret):
        raise ValueError(
            f"token_secret {secret!r} is not a Secret Manager name; expected 'NAME', "
            "'projects/P/secrets/NAME' or 'projects/P/secrets/NAME/versions/V'"
        )
    return secret if "/versions/" in secret else f"{secret}/versions/latest"


@dataclass
class JobSettings:
    """What every pilot job of one provider shares; :func:`job` adds the command and name."""

    machine_type: str | None = None
    cpu_milli: int = 1000
    memory_mib: int | None = None
    boot_disk_mib: int | None = None
    spot: bool = False
    image: str | None = None
    container_options: str = ""
    env: dict[str, str] = field(default_factory=dict)
    secret_variables: dict[str, str] = field(default_factory=dict)
    worker_init: str = ""
    walltime_s: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    allowed_locations: list[str] = field(default_factory=list)
    service_account: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    no_external_ip: bool = False
    priority: int = 0


def token_file(command: str) -> str | None:
    """The path the pilot command's ``--token-file`` names, if any."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "--token-file" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--token-file="):
            return word.split("=", 1)[1]
    return None


def script(command: str, settings: JobSettings, token_path: str | None = None) -> str:
    """The shell text a pilot task runs: write the token file, ``worker_init``, then the command."""
    lines = []
    if token_path:
        # The harvester's --token-file does not exist on a fresh VM: make it from the variable.
        path = shlex.quote(token_path)
        lines += [
            f'if [ -n "${{{TOKEN_VARIABLE}:-}}" ]; then',
            f'  mkdir -p "$(dirname {path})" && (umask 077 && printf %s "${TOKEN_VARIABLE}" > {path})',
            "fi",
        ]
    if settings.worker_init:
        lines.append(settings.worker_init)
    lines.append(command)
    return "\n".join(lines)


def runnable(command: str, settings: JobSettings, token_path: str | None = None) -> batch_v1.Runnable:
    """A container runnable when an image is set (``/bin/sh -c <script>`` as its entry point), else a
    script runnable on the VM's own OS."""
    text = script(command, settings, token_path)
    if settings.image:
        return batch_v1.Runnable(
            container=batch_v1.Runnable.Container(
                image_uri=settings.image,
                entrypoint="/bin/sh",
                commands=["-c", text],
                options=settings.container_options,
            ),
            display_name="pilot",
        )
    return batch_v1.Runnable(script=batch_v1.Runnable.Script(text=f"#!/bin/sh\n{text}"), display_name="pilot")


def job(
    command: str,
    name: str,
    settings: JobSettings,
    variables: Mapping[str, str] | None = None,
    token_path: str | None = None,
) -> batch_v1.Job:
    """The ``batch_v1.Job`` for one pilot called ``name``; ``variables`` join the task's environment
    (a token read from the harvester's environment goes here) and the token is written to
    ``token_path`` before the command runs."""
    resource = batch_v1.ComputeResource(cpu_milli=settings.cpu_milli)
    if settings.memory_mib:
        resource.memory_mib = settings.memory_mib
    if settings.boot_disk_mib:
        resource.boot_disk_mib = settings.boot_disk_mib
    task = batch_v1.TaskSpec(
        runnables=[runnable(command, settings, token_path)],
        compute_resource=resource,
        max_retry_count=0,
        environment=batch_v1.Environment(
            variables={**settings.env, **(variables or {})}, secret_variables=settings.secret_variables
        ),
    )
    if settings.walltime_s:
        task.max_run_duration = duration_pb2.Duration(seconds=int(settings.walltime_s))
    model = batch_v1.AllocationPolicy.ProvisioningModel
    instance = batch_v1.AllocationPolicy.InstancePolicy(
        provisioning_model=model.SPOT if settings.spot else model.STANDARD
    )
    if settings.machine_type:
        instance.machine_type = settings.machine_type
    labels = {**settings.labels, WORKER_LABEL: name}
    allocation = batch_v1.AllocationPolicy(
        instances=[batch_v1.AllocationPolicy.InstancePolicyOrTemplate(policy=instance)],
        labels=labels,
    )
    if settings.allowed_locations:
        allocation.location = batch_v1.AllocationPolicy.LocationPolicy(
            allowed_locations=list(settings.allowed_locations)
        )
    if settings.service_account:
        allocation.service_account = batch_v1.ServiceAccount(email=settings.service_account)
    if settings.network or settings.subnetwork or settings.no_external_ip:
        nic: dict[str, Any] = {"no_external_ip_address": settings.no_external_ip}
        if settings.network:
            nic["network"] = settings.network
        if settings.subnetwork:
            nic["subnetwork"] = settings.subnetwork
        allocation.network = batch_v1.AllocationPolicy.NetworkPolicy(
            network_interfaces=[batch_v1.AllocationPolicy.NetworkInterface(**nic)]
        )
    return batch_v1.Job(
        priority=settings.priority,
        task_groups=[batch_v1.TaskGroup(task_spec=task, task_count=1, parallelism=1)],
        allocation_policy=allocation,
        labels=labels,
        logs_policy=batch_v1.LogsPolicy(destination=batch_v1.LogsPolicy.Destination.CLOUD_LOGGING),
    )
