"""The objects a pilot becomes on Kubernetes: a ``batch/v1`` Job (default) or a bare ``v1`` Pod.

Pure functions of the provider's settings, so tests compare them field by field. A pilot pod:

* runs ``/bin/sh -c "<worker_init>; <pilot command>"`` once (``restartPolicy: Never``; a Job
  gets ``backoffLimit: 0``: a failed pilot is replaced by the harvester, not retried in place);
* requests *and* limits the queue's cores and memory (``"2"``, ``"4Gi"``), so the scheduler
  packs pilots by the queue's memory classes and a pilot that overruns is killed, not its
  neighbours (the Guaranteed QoS class when requests equal limits);
* gets the server token from a Secret (never on the command line), as ``PANDAFLOW_TOKEN`` and as
  a file mounted where the harvester's ``--token-file`` points; and
  ``PARSL_CORES``/``PARSL_MEMORY_GB`` as parsl's provider contract asks;
* does not mount a service-account token unless asked: pilots never talk to the Kubernetes API.
"""

from __future__ import annotations

import math
import re
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
WORKER_LABEL = "pandaflow/worker"  # the object's own name, so its pods can be found
COMPONENT = {
    "app.kubernetes.io/name": "pandaflow",
    "app.kubernetes.io/component": "pilot",
    MANAGED_BY: "pandaflow",
}


def cpu_quantity(cores: float) -> str:
    """Kubernetes CPU quantity: whole cores as ``"2"``, fractions in millicores (``"500m"``)."""
    if cores <= 0:
        raise ValueError(f"cpu must be positive, got {cores}")
    if float(cores).is_integer():
        return str(int(cores))
    return f"{math.ceil(cores * 1000)}m"


def memory_quantity(megabytes: float) -> str:
    """Kubernetes memory quantity from MiB: ``"4Gi"`` when whole GiB, else ``"1500Mi"``."""
    if megabytes <= 0:
        raise ValueError(f"memory must be positive, got {megabytes}")
    mib = math.ceil(megabytes)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


_DNS = re.compile(r"[^a-z0-9-]+")


def object_name(job_name: str, suffix: str, limit: int = 63) -> str:
    """A DNS-1123 label from a harvester job name (``pandaflow-GOOGLE_IDF-12`` ->
    ``pandaflow-google-idf-12-<suffix>``), at most 63 characters so it fits the label value too."""
    base = _DNS.sub("-", job_name.lower()).strip("-") or "pilot"
    base = base[: limit - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def resources(
    cpu: float,
    memory_mb: float | None,
    cpu_limit: float | None,
    memory_limit_mb: float | None,
    extra_requests: dict[str, str],
    extra_limits: dict[str, str],
) -> dict[str, dict[str, str]]:
    """Requests and limits; limits default to the requests (Guaranteed QoS)."""
    requests = {"cpu": cpu_quantity(cpu)}
    limits = {"cpu": cpu_quantity(cpu_limit if cpu_limit is not None else cpu)}
    if memory_mb:
        requests["memory"] = memory_quantity(memory_mb)
        limits["memory"] = memory_quantity(memory_limit_mb or memory_mb)
    elif memory_limit_mb:
        limits["memory"] = memory_quantity(memory_limit_mb)
    return {"requests": {**requests, **extra_requests}, "limits": {**limits, **extra_limits}}


def pod_spec(
    *,
    command: str,
    image: str,
    resources: dict[str, dict[str, str]],
    env: dict[str, str],
    token_secret: str | None,
    token_key: str,
    token_mount: str | None,
    service_account_name: str | None,
    automount_service_account_token: bool,
    node_selector: dict[str, str],
    tolerations: list[dict[str, Any]],
    image_pull_secrets: list[str],
    image_pull_policy: str | None,
    scratch_dir: str | None,
    priority_class_name: str | None,
    run_as_user: int | None,
    run_as_group: int | None,
) -> dict[str, Any]:
    """The pod spec of one pilot."""
    variables = [{"name": k, "value": str(v)} for k, v in env.items()]
    if token_secret:
        variables.append(
            {
                "name": "PANDAFLOW_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token_secret, "key": token_key}},
            }
        )
    container: dict[str, Any] = {
        "name": "pilot",
        "image": image,
        "command": ["/bin/sh", "-c", command],
        "env": variables,
        "resources": resources,
    }
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "automountServiceAccountToken": automount_service_account_token,
    }
    mounts, volumes = [], []
    if token_secret and token_mount:
        # The pilot command names a token file (the harvester's --token-file): the same Secret,
        # mounted at the same path in the harvester's pod and here, makes that path valid.
        mounts.append({"name": "token", "mountPath": token_mount, "readOnly": True})
        volumes.append({"name": "token", "secret": {"secretName": token_secret, "defaultMode": 0o440}})
    if scratch_dir:
        mounts.append({"name": "scratch", "mountPath": scratch_dir})
        volumes.append({"name": "scratch", "emptyDir": {}})
    if mounts:
        container["volumeMounts"], spec["volumes"] = mounts, volumes
    if service_account_name:
        spec["serviceAccountName"] = service_account_name
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in image_pull_secrets]
    if priority_class_name:
        spec["priorityClassName"] = priority_class_name
    security = {k: v for k, v in (("runAsUser", run_as_user), ("runAsGroup", run_as_group)) if v is not None}
    if security:
        spec["securityContext"] = security
    return spec


def metadata(
    name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {**labels, WORKER_LABEL: name}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod(
    name: str,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    spec: dict[str, Any],
    deadline_s: int | None,
) -> dict[str, Any]:
    """A bare pod: nothing recreates it if its node goes away (the harvester does, as a new worker)."""
    spec = dict(spec)
    if deadline_s:
        spec["activeDeadlineSeconds"] = deadline_s
    meta = metadata(name, namespace, labels, annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def job(
    name: str,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    spec: dict[str, Any],
    deadline_s: int | None,
    ttl_s: int | None,
) -> dict[str, Any]:
    """A Job of one pod, never retried, kept ``ttl_s`` after it ends so the harvester sees how."""
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": metadata(name, namespace, labels, annotations), "spec": spec},
    }
    del job_spec["template"]["metadata"]["name"], job_spec["template"]["metadata"]["namespace"]
    if deadline_s:
        job_spec["activeDeadlineSeconds"] = deadline_s
    if ttl_s is not None:
        job_spec["ttlSecondsAfterFinished"] = ttl_s
    meta = metadata(name, namespace, labels, annotations)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
