"""``KubernetesProvider``: pilots as Kubernetes Jobs (or bare Pods), through the REST API."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider

from pandaflow.providers.kubernetes import manifests
from pandaflow.providers.kubernetes.api import Connection, KubeApi, KubernetesApiError, discover
from pandaflow.providers.script import block_script

log = logging.getLogger(__name__)

_POD_PHASES = {
    "Pending": JobState.PENDING,
    "Running": JobState.RUNNING,
    "Succeeded": JobState.COMPLETED,
    "Failed": JobState.FAILED,
    "Unknown": JobState.UNKNOWN,
}
_KINDS = ("job", "pod")


class KubernetesProvider(ExecutionProvider):
    """Start each pilot as a ``batch/v1`` Job of one pod (``kind="job"``) or as a bare Pod.

    The parsl contract (``parsl/providers/base.py``)::

        submit(command, tasks_per_node, job_name) -> object name    POST  .../jobs  (or .../pods)
        status([name, ...]) -> [JobStatus, ...]                     GET   .../jobs?labelSelector=...
                                                                    GET   .../pods?labelSelector=...
                                                                    GET   .../jobs/<name> (not listed)
        cancel([name, ...]) -> [bool, ...]                          DELETE .../jobs/<name>, propagation
                                                                    Background (its pod goes too)

    States: a Job's ``Complete`` condition is COMPLETED, ``Failed`` is FAILED (TIMEOUT when the
    reason is ``DeadlineExceeded``, i.e. ``walltime_s`` ran out), ``Suspended`` is HELD; otherwise
    its pod's phase decides (Pending -> PENDING, with the reason it waits such as
    ``Unschedulable`` or ``ImagePullBackOff``; Running -> RUNNING). An object that no longer
    exists is MISSING. Exit codes and reasons (``OOMKilled``, a preempted node) come from the pod.

    Sizes: ``cpu`` and ``memory_mb`` are requested and, unless ``cpu_limit``/``memory_limit_mb``
    say otherwise, also the limits; the harvester fills both from the queue (``worker_cores``,
    ``worker_memory_mb``). ``secret`` names the Secret whose ``secret_key`` entry is the server
    token, given to the pilot as ``PANDAFLOW_TOKEN`` and mounted read-only under
    ``secret_mount_path`` (the pilot command names ``--token-file``: run the harvester with
    ``--token-file /var/run/pandaflow/token`` from the same Secret so the path holds in both pods).
    Unlike parsl's ``secret``, it is not an image-pull secret; those are ``image_pull_secrets``.
    ``node_selector`` and ``tolerations`` pick node pools, e.g. GKE spot nodes::

        "node_selector": {"cloud.google.com/gke-spot": "true"},
        "tolerations": [{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                         "effect": "NoSchedule"}]

    The API server is found as :func:`pandaflow.providers.kubernetes.api.discover` says: the
    ``kubeconfig`` given, else the pod's service account (the harvester running in-cluster),
    else ``$KUBECONFIG`` / ``~/.kube/config``. ``namespace`` defaults to that connection's.
    """

    def __init__(
        self,
        image: str,
        namespace: str | None = None,
        kind: str = "job",
        cpu: float = 1,
        memory_mb: int | None = None,
        cpu_limit: float | None = None,
        memory_limit_mb: int | None = None,
        extra_requests: dict[str, str] | None = None,
        extra_limits: dict[str, str] | None = None,
        secret: str | None = None,
        secret_key: str = "token",
        secret_mount_path: str | None = "/var/run/pandaflow",
        service_account_name: str | None = None,
        automount_service_account_token: bool = False,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        image_pull_secrets: list[str] | None = None,
        image_pull_policy: str | None = None,
        env: dict[str, str] | None = None,
        worker_init: str = "",
        scratch_dir: str | None = None,
        walltime_s: int | None = None,
        ttl_after_finished_s: int | None = 3600,
        priority_class_name: str | None = None,
        run_as_user: int | None = None,
        run_as_group: int | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        request_timeout_s: float = 30.0,
        label: str = "kubernetes",
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self.kind = kind
        self.image = image
        self._label = label
        self.cores_per_node: int | None = int(cpu) if float(cpu).is_integer() else None
        self.mem_per_node: float | None = memory_mb / 1024 if memory_mb else None
        self._resources = manifests.resources(
            cpu, memory_mb, cpu_limit, memory_limit_mb, extra_requests or {}, extra_limits or {}
        )
        self.labels = {**manifests.COMPONENT, **(labels or {})}
        self.annotations = dict(annotations or {})
        self.worker_init = worker_init
        self.walltime_s = walltime_s
        self.ttl_after_finished_s = ttl_after_finished_s
        env = dict(env or {})
        env.setdefault("PARSL_CORES", str(cpu))
        if memory_mb:
            env.setdefault("PARSL_MEMORY_GB", f"{memory_mb / 1024:g}")
        self._pod_settings = {
            "image": image,
            "resources": self._resources,
            "env": env,
            "token_secret": secret,
            "token_key": secret_key,
            "token_mount": secret_mount_path,
            "service_account_name": service_account_name,
            "automount_service_account_token": automount_service_account_token,
            "node_selector": node_selector or {},
            "tolerations": tolerations or [],
            "image_pull_secrets": image_pull_secrets or [],
            "image_pull_policy": image_pull_policy,
            "scratch_dir": scratch_dir,
            "priority_class_name": priority_class_name,
            "run_as_user": run_as_user,
            "run_as_group": run_as_group,
        }
        self.connection: Connection = discover(kubeconfig, context)
        self.namespace = namespace or self.connection.namespace or "default"
        self.api = KubeApi(self.connection, timeout=request_timeout_s)
        # parsl's provider attributes; the harvester scales, so blocks stay at one pilot.
        self.min_blocks, self.max_blocks, self.init_blocks = 0, 1, 0
        self.nodes_per_block, self.parallelism = 1, 1.0
        self.script_dir: str | None = None
        self.resources: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- parsl's interface
    @property
    def label(self) -> str:
        return self._label

    @property
    def status_polling_interval(self) -> int:
        return 30

    def manifest(self, command: str, name: str, tasks_per_node: int = 1) -> dict[str, Any]:
        """The object :meth:`submit` creates for ``command`` under ``name``."""
        script = block_script(command, tasks_per_node, self.worker_init)
        spec = manifests.pod_spec(command=script, **self._pod_settings)
        if self.kind == "pod":
            return manifests.pod(name, self.namespace, self.labels, self.annotations, spec, self.walltime_s)
        return manifests.job(
            name,
            self.namespace,
            self.labels,
            self.annotations,
            spec,
            self.walltime_s,
            self.ttl_after_finished_s,
        )

    def submit(self, command: str, tasks_per_node: int = 1, job_name: str = "pandaflow-pilot") -> str:
        """Create the pilot's Job (or Pod); returns its name, the job id. Raises
        :class:`KubernetesApiError` when the API server refuses (quota, RBAC, bad image name)."""
        name = manifests.object_name(job_name, secrets.token_hex(3))
        created = self.api.create(self._collection(), self.manifest(command, name, tasks_per_node))
        name = (created or {}).get("metadata", {}).get("name", name)
        self.resources[name] = {"job_id": name, "status": JobStatus(JobState.PENDING)}
        log.debug("kubernetes: created %s %s/%s", self.kind, self.namespace, name)
        return name

    def status(self, job_ids: Sequence[object]) -> list[JobStatus]:
        """The state of each named object; one list call per kind, a get for any not listed."""
        names = [str(j) for j in job_ids]
        if not names:
            return []
        selector = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in self.api.list(self._collection("pod"), selector):
            owner = (pod.get("metadata", {}).get("labels") or {}).get(manifests.WORKER_LABEL)
            pods.setdefault(owner, []).append(pod)
        if self.kind == "job":
            listed = {j["metadata"]["name"]: j for j in self.api.list(self._collection(), selector)}
        else:
            listed = {name: group[0] for name, group in pods.items()}
        found = []
        for name in names:
            obj = listed.get(name) or self._get(name)
            if obj is None:
                status = JobStatus(JobState.MISSING, f"{self.kind} {self.namespace}/{name} no longer exists")
            elif self.kind == "job":
                status = _job_status(obj, pods.get(name, []))
            else:
                status = _pod_status(obj)
            if name in self.resources:
                self.resources[name]["status"] = status
            found.append(status)
        return found

    def cancel(self, job_ids: Sequence[object]) -> list[bool]:
        """Delete each object with its pods (``propagationPolicy: Background``); True when it is
        gone, including when it was gone already."""
        done = []
        for job_id in job_ids:
            name = str(job_id)
            try:
                self.api.delete(f"{self._collection()}/{name}")
            except KubernetesApiError as exc:
                log.warning("kubernetes: cannot delete %s %s: %s", self.kind, name, exc)
                done.append(False)
                continue
            if name in self.resources:
                self.resources[name]["status"] = JobStatus(JobState.CANCELLED)
            done.append(True)
        return done

    # ---------------------------------------------------------------- helpers
    def _collection(self, kind: str | None = None) -> str:
        if (kind or self.kind) == "job":
            return f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get(f"{self._collection()}/{name}")
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise


def _job_status(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobStatus:
    found = (job.get("status") or {}).get("conditions") or []
    conditions = {c.get("type"): c for c in found if c.get("status") == "True"}
    latest = _latest(pods)
    exit_code, why = _termination(latest) if latest else (None, None)
    for kind in ("Complete", "SuccessCriteriaMet"):
        if kind in conditions:
            return JobStatus(JobState.COMPLETED, exit_code=exit_code if exit_code is not None else 0)
    for kind in ("Failed", "FailureTarget"):
        if kind in conditions:
            cond = conditions[kind]
            state = JobState.TIMEOUT if cond.get("reason") == "DeadlineExceeded" else JobState.FAILED
            message = ": ".join(x for x in (cond.get("reason"), cond.get("message"), why) if x)
            return JobStatus(state, message or None, exit_code=exit_code)
    if "Suspended" in conditions:
        return JobStatus(JobState.HELD, "the Job is suspended")
    if latest is None:
        return JobStatus(JobState.PENDING, "no pod yet")
    status = _pod_status(latest)
    if status.terminal:  # the pod ended but the Job controller has not caught up: still running
        return JobStatus(JobState.RUNNING, status.message, exit_code=status.exit_code)
    return status


def _latest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", default=None)


def _termination(pod: dict[str, Any]) -> tuple[int | None, str | None]:
    """The pilot container's exit code and why it ended or waits (``OOMKilled``, ``ErrImagePull``)."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "terminated" in state:
            t = state["terminated"]
            return t.get("exitCode"), " ".join(x for x in (t.get("reason"), t.get("message")) if x) or None
        if "waiting" in state:
            w = state["waiting"]
            return None, " ".join(x for x in (w.get("reason"), w.get("message")) if x) or None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return None, " ".join(x for x in (cond.get("reason"), cond.get("message")) if x) or None
    return None, " ".join(x for x in (status.get("reason"), status.get("message")) if x) or None


def _pod_status(pod: dict[str, Any]) -> JobStatus:
    status = pod.get("status") or {}
    state = _POD_PHASES.get(status.get("phase", "Pending"), JobState.UNKNOWN)
    exit_code, why = _termination(pod)
    if state == JobState.FAILED and status.get("reason") == "DeadlineExceeded":
        state = JobState.TIMEOUT
    if state == JobState.FAILED and not why:
        why = " ".join(x for x in (status.get("reason"), status.get("message")) if x) or None
    return JobStatus(state, why, exit_code=exit_code)
