"""KubernetesProvider against a fake Kubernetes API server at the HTTP level: the exact objects it
creates, the calls it makes for submit / status / cancel, how states map to parsl's, and how it
finds and authenticates to the API server (kubeconfig, in-cluster, TLS)."""

import pytest
from parsl.jobs.states import JobState
from support.kube_api import TOKEN, FakeKubeApi, b64, write_kubeconfig

from pandaflow import providers
from pandaflow.providers.kubernetes import KubernetesApiError, KubernetesConfigError, KubernetesProvider
from pandaflow.providers.kubernetes import api as kube
from pandaflow.providers.kubernetes.manifests import cpu_quantity, memory_quantity, object_name

IMAGE = "registry.example/pandaflow/pilot:1"
SELECTOR = ",".join(
    [
        "app.kubernetes.io/component=pilot",
        "app.kubernetes.io/managed-by=pandaflow",
        "app.kubernetes.io/name=pandaflow",
    ]
)


def make(kubeconfig, **kw):
    return KubernetesProvider(image=IMAGE, kubeconfig=kubeconfig, **kw)


# ---------------------------------------------------------------- the objects


@pytest.mark.parametrize(
    "cores, text", [(1, "1"), (2, "2"), (2.0, "2"), (0.5, "500m"), (1.25, "1250m")]
)  # fmt: skip
def test_cpu_quantities_are_whole_cores_or_millicores(cores, text):
    assert cpu_quantity(cores) == text


@pytest.mark.parametrize(
    "mb, text", [(4096, "4Gi"), (14336, "14Gi"), (40960, "40Gi"), (241664, "236Gi"), (1500, "1500Mi")]
)  # fmt: skip
def test_memory_quantities_are_gibibytes_when_whole(mb, text):
    assert memory_quantity(mb) == text


def test_object_names_are_dns_labels_of_at_most_63_characters():
    assert object_name("pandaflow-GOOGLE_IDF_HIMEM-12", "a1b2c3") == "pandaflow-google-idf-himem-12-a1b2c3"
    long = object_name("pandaflow-" + "X" * 80, "a1b2c3")
    assert len(long) == 63 and long.endswith("-a1b2c3")


def test_submit_creates_a_job_with_the_queue_size_token_secret_and_spot_placement(kube_api, kubeconfig):
    provider = make(
        kubeconfig, cpu=2, memory_mb=4096, secret="pandaflow-token", service_account_name="pandaflow-pilot",
        node_selector={"cloud.google.com/gke-spot": "true"},
        tolerations=[{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                      "effect": "NoSchedule"}],
        annotations={"pandaflow/queue": "GOOGLE_IDF"}, walltime_s=86400,
    )  # fmt: skip
    name = provider.submit("python -m pandaflow.pilot --queue Q", 1, "pandaflow-GOOGLE_IDF-7")
    (post,) = kube_api.calls("POST")
    assert post.path == "/apis/batch/v1/namespaces/pilots/jobs"
    assert post.authorization == f"Bearer {TOKEN}"
    labels = {
        "app.kubernetes.io/name": "pandaflow",
        "app.kubernetes.io/component": "pilot",
        "app.kubernetes.io/managed-by": "pandaflow",
        "pandaflow/worker": name,
    }
    assert name.startswith("pandaflow-google-idf-7-")
    assert post.body == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "pilots", "labels": labels,
                     "annotations": {"pandaflow/queue": "GOOGLE_IDF"}},
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": 86400,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels, "annotations": {"pandaflow/queue": "GOOGLE_IDF"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "serviceAccountName": "pandaflow-pilot",
                    "nodeSelector": {"cloud.google.com/gke-spot": "true"},
                    "tolerations": [{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                                     "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "pilot",
                        "image": IMAGE,
                        "command": ["/bin/sh", "-c", "python -m pandaflow.pilot --queue Q"],
                        "env": [
                            {"name": "PARSL_CORES", "value": "2"},
                            {"name": "PARSL_MEMORY_GB", "value": "4"},
                            {"name": "PANDAFLOW_TOKEN",
                             "valueFrom": {"secretKeyRef": {"name": "pandaflow-token", "key": "token"}}},
                        ],
                        "resources": {"requests": {"cpu": "2", "memory": "4Gi"},
                                      "limits": {"cpu": "2", "memory": "4Gi"}},
                        "volumeMounts": [{"name": "token", "mountPath": "/var/run/pandaflow",
                                          "readOnly": True}],
                    }],
                    "volumes": [{"name": "token",
                                 "secret": {"secretName": "pandaflow-token", "defaultMode": 0o440}}],
                },
            },
        },
    }  # fmt: skip
    assert kube_api.names("Job") == [name]


def test_a_bare_pod_goes_to_the_pods_collection_with_the_same_spec(kube_api, kubeconfig):
    provider = make(kubeconfig, kind="pod", cpu=1, memory_mb=1500, scratch_dir="/scratch", walltime_s=600)
    name = provider.submit("echo hi", 1, "pandaflow-q-1")
    (post,) = kube_api.calls("POST")
    assert post.path == "/api/v1/namespaces/pilots/pods"
    assert (post.body["kind"], post.body["apiVersion"]) == ("Pod", "v1")
    spec = post.body["spec"]
    assert spec["activeDeadlineSeconds"] == 600 and spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "1500Mi"},
        "limits": {"cpu": "1", "memory": "1500Mi"},
    }
    assert spec["containers"][0]["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"}]
    assert spec["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert kube_api.names("Pod") == [name]


def test_limits_can_differ_from_requests_and_take_extra_resources(kube_api, kubeconfig):
    provider = make(
        kubeconfig, cpu=0.5, memory_mb=2048, cpu_limit=2, memory_limit_mb=4096,
        extra_requests={"ephemeral-storage": "10Gi"}, extra_limits={"nvidia.com/gpu": "1"},
    )  # fmt: skip
    provider.submit("true", 1, "p")
    resources = kube_api.calls("POST")[0].body["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "500m", "memory": "2Gi", "ephemeral-storage": "10Gi"},
        "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
    }


def test_the_token_never_appears_in_the_object(kube_api, kubeconfig):
    make(kubeconfig, secret="pandaflow-token").submit("python -m pandaflow.pilot --token-file /t", 1, "p")
    assert "fake-token" not in repr(kube_api.calls("POST")[0].body)


def test_worker_init_runs_before_the_pilot_and_tasks_per_node_fans_out(kube_api, kubeconfig):
    provider = make(kubeconfig, worker_init="source /opt/lsst/loadLSST.bash")
    provider.submit("run-pilot", 3, "p")
    script = kube_api.calls("POST")[0].body["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert script == "source /opt/lsst/loadLSST.bash\nfor i in $(seq 3); do /bin/sh -c run-pilot & done; wait"


def test_a_refused_create_raises_with_the_api_servers_reason(kube_api, kubeconfig):
    quota = "jobs.batch is forbidden: exceeded quota: pilots, requested: limits.memory=4Gi"
    kube_api.fail_next("POST", "/apis/batch/v1", 403, "Forbidden", quota)
    with pytest.raises(
        KubernetesApiError, match=r"HTTP 403 Forbidden: jobs.batch is forbidden: exceeded quota"
    ):
        make(kubeconfig, memory_mb=4096).submit("true", 1, "p")
    assert kube_api.names("Job") == []


def test_an_invalid_object_is_refused_by_the_api_and_reported(kube_api, kubeconfig):
    with pytest.raises(KubernetesApiError, match=r"HTTP 422 Invalid: .*image: Required value"):
        KubernetesProvider(image="", kubeconfig=kubeconfig).submit("true", 1, "p")


# ---------------------------------------------------------------- status


def test_status_lists_jobs_and_pods_once_by_label(kube_api, kubeconfig):
    provider = make(kubeconfig)
    names = [provider.submit("true", 1, f"p{i}") for i in range(3)]
    kube_api.requests.clear()
    states = provider.status(names)
    assert [s.state for s in states] == [JobState.PENDING] * 3
    assert [(r.method, r.path, r.query["labelSelector"]) for r in kube_api.requests] == [
        ("GET", "/api/v1/namespaces/pilots/pods", SELECTOR),
        ("GET", "/apis/batch/v1/namespaces/pilots/jobs", SELECTOR),
    ]


def test_status_follows_the_pod_from_pending_to_running(kube_api, kubeconfig):
    provider = make(kubeconfig)
    name = provider.submit("true", 1, "p")
    assert provider.status([name])[0].message == "no pod yet"
    full = "0/3 nodes are available: 3 Insufficient memory."
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": full}
    pod = kube_api.start_pod(name, conditions=[unschedulable])
    waiting = provider.status([name])[0]
    assert waiting.state == JobState.PENDING
    assert waiting.message == "Unschedulable 0/3 nodes are available: 3 Insufficient memory."
    kube_api.set_pod(pod, phase="Running", containerStatuses=[{"name": "pilot", "state": {"running": {}}}])
    assert provider.status([name])[0].state == JobState.RUNNING


def test_a_failed_job_reports_the_pods_exit_code_and_reason(kube_api, kubeconfig):
    provider = make(kubeconfig)
    name = provider.submit("true", 1, "p")
    pod = kube_api.start_pod(name)
    kube_api.set_pod(pod, phase="Failed", containerStatuses=[
        {"name": "pilot", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])  # fmt: skip
    kube_api.set_job_condition(
        name, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    )
    status = provider.status([name])[0]
    assert (status.state, status.exit_code) == (JobState.FAILED, 137)
    assert status.message == "BackoffLimitExceeded: Job has reached the specified backoff limit: OOMKilled"


def test_a_pod_that_ended_before_the_job_controller_noticed_is_still_running(kube_api, kubeconfig):
    provider = make(kubeconfig)
    name = provider.submit("true", 1, "p")
    kube_api.set_pod(kube_api.start_pod(name), phase="Succeeded")
    assert provider.status([name])[0].state == JobState.RUNNING


@pytest.mark.parametrize(
    "condition, reason, state",
    [("Complete", "", JobState.COMPLETED), ("SuccessCriteriaMet", "", JobState.COMPLETED),
     ("Failed", "DeadlineExceeded", JobState.TIMEOUT), ("Suspended", "", JobState.HELD)],
)  # fmt: skip
def test_job_conditions_map_to_parsl_states(kube_api, kubeconfig, condition, reason, state):
    provider = make(kubeconfig)
    name = provider.submit("true", 1, "p")
    kube_api.set_job_condition(name, condition, reason)
    assert provider.status([name])[0].state == state


@pytest.mark.parametrize(
    "phase, state",
    [("Pending", JobState.PENDING), ("Running", JobState.RUNNING), ("Succeeded", JobState.COMPLETED),
     ("Failed", JobState.FAILED), ("Unknown", JobState.UNKNOWN)],
)  # fmt: skip
def test_pod_phases_map_to_parsl_states(kube_api, kubeconfig, phase, state):
    provider = make(kubeconfig, kind="pod")
    name = provider.submit("true", 1, "p")
    kube_api.set_pod(name, phase=phase)
    assert provider.status([name])[0].state == state


def test_a_preempted_pod_fails_with_the_nodes_reason(kube_api, kubeconfig):
    provider = make(kubeconfig, kind="pod")
    name = provider.submit("true", 1, "p")
    shutdown = "Pod was terminated in response to imminent node shutdown."
    kube_api.set_pod(name, phase="Failed", reason="NodeShutdown", message=shutdown)
    status = provider.status([name])[0]
    assert status.state == JobState.FAILED
    assert status.message == "NodeShutdown Pod was terminated in response to imminent node shutdown."


def test_an_object_outside_the_label_selection_is_read_by_name(kube_api, kubeconfig):
    name = make(kubeconfig).submit("true", 1, "p")
    relabelled = make(kubeconfig, labels={"pandaflow/site": "idf"})  # e.g. labels changed between restarts
    kube_api.requests.clear()
    assert relabelled.status([name])[0].state == JobState.PENDING
    assert [(r.method, r.path) for r in kube_api.requests][-1] == (
        "GET", f"/apis/batch/v1/namespaces/pilots/jobs/{name}"
    )  # fmt: skip


def test_an_object_that_is_gone_is_missing(kube_api, kubeconfig):
    status = make(kubeconfig).status(["pandaflow-q-1-abcdef"])[0]
    assert status.state == JobState.MISSING
    assert status.message == "job pilots/pandaflow-q-1-abcdef no longer exists"


def test_status_follows_continue_tokens_across_pages(tmp_path):
    with FakeKubeApi(token=TOKEN, page=2) as api:
        provider = make(write_kubeconfig(tmp_path / "kc", api.url))
        names = [provider.submit("true", 1, f"p{i}") for i in range(5)]
        api.requests.clear()
        assert [s.state for s in provider.status(names)] == [JobState.PENDING] * 5
        jobs = [r for r in api.requests if r.path.endswith("/jobs")]
        assert [r.query.get("continue") for r in jobs] == [None, "2", "4"]
        assert all(r.method == "GET" and r.path.endswith("s") for r in api.requests)


# ---------------------------------------------------------------- cancel


def test_cancel_deletes_the_job_and_its_pods_in_the_background(kube_api, kubeconfig):
    provider = make(kubeconfig)
    name = provider.submit("true", 1, "p")
    kube_api.start_pod(name, phase="Running")
    assert provider.cancel([name]) == [True]
    (delete,) = kube_api.calls("DELETE")
    assert delete.path == f"/apis/batch/v1/namespaces/pilots/jobs/{name}"
    assert delete.body == {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    assert kube_api.objects == {}
    assert provider.resources[name]["status"].state == JobState.CANCELLED


def test_cancelling_what_is_already_gone_succeeds(kube_api, kubeconfig):
    assert make(kubeconfig).cancel(["pandaflow-q-1-abcdef"]) == [True]


def test_a_refused_delete_is_false_for_that_object_only(kube_api, kubeconfig):
    provider = make(kubeconfig)
    a, b = provider.submit("true", 1, "a"), provider.submit("true", 1, "b")
    kube_api.fail_next("DELETE", f"/apis/batch/v1/namespaces/pilots/jobs/{a}", 403, "Forbidden", "no")
    assert provider.cancel([a, b]) == [False, True]
    assert kube_api.names("Job") == [a]


# ---------------------------------------------------------------- finding the API server


def test_a_wrong_token_is_an_unauthorized_error(tmp_path, kube_api):
    config = write_kubeconfig(tmp_path / "kc", kube_api.url, user={"token": "stale"})
    with pytest.raises(KubernetesApiError, match="HTTP 401 Unauthorized"):
        make(config).submit("true", 1, "p")


def test_an_unreachable_api_server_is_an_api_error(tmp_path):
    config = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    with pytest.raises(
        KubernetesApiError, match=r"POST /apis/batch/v1/namespaces/pilots/jobs: ConnectionError"
    ):
        make(config, request_timeout_s=2).submit("true", 1, "p")


def test_kubeconfig_with_ca_data_verifies_the_servers_certificate(tmp_path, tls_pair):
    with FakeKubeApi(token=TOKEN, tls=tls_pair) as api:
        config = write_kubeconfig(
            tmp_path / "kc", api.url, cluster={"certificate-authority-data": b64(tls_pair[0])}
        )
        assert make(config).submit("true", 1, "p") in api.names("Job")


def test_an_unknown_certificate_is_refused(tmp_path, tls_pair):
    with FakeKubeApi(token=TOKEN, tls=tls_pair) as api:
        with pytest.raises(KubernetesApiError, match="SSLError"):
            make(write_kubeconfig(tmp_path / "kc", api.url)).submit("true", 1, "p")
        assert api.requests == []


def test_token_file_and_ca_file_paths_are_relative_to_the_kubeconfig(tmp_path, tls_pair):
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "ca.crt").write_bytes(open(tls_pair[0], "rb").read())
    with FakeKubeApi(token=TOKEN, tls=tls_pair) as api:
        config = write_kubeconfig(
            tmp_path / "kc", api.url, user={"tokenFile": "token"}, cluster={"certificate-authority": "ca.crt"}
        )
        make(config).submit("true", 1, "p")
        assert api.calls("POST")[0].authorization == f"Bearer {TOKEN}"


def test_in_cluster_uses_the_service_account_and_rereads_its_rotated_token(tmp_path, tls_pair, monkeypatch):
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("first")
    (account / "ca.crt").write_bytes(open(tls_pair[0], "rb").read())
    (account / "namespace").write_text("pandaflow")
    with FakeKubeApi(token=None, tls=tls_pair) as api:
        port = api.url.rsplit(":", 1)[1]
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", account)
        monkeypatch.setattr(kube.in_cluster, "__defaults__", (account, None))
        provider = KubernetesProvider(image=IMAGE)
        assert provider.namespace == "pandaflow" and provider.connection.source == "in-cluster"
        provider.submit("true", 1, "p")
        (account / "token").write_text("second")
        provider.status(["x"])
        assert [r.authorization for r in api.requests] == ["Bearer first"] + ["Bearer second"] * 3
        assert api.requests[0].path == "/apis/batch/v1/namespaces/pandaflow/jobs"


def test_plugin_authentication_is_refused_with_what_to_do_instead(tmp_path):
    config = write_kubeconfig(
        tmp_path / "kc", "https://gke.example", user={"exec": {"command": "gke-gcloud-auth-plugin"}}
    )
    with pytest.raises(KubernetesConfigError, match="through a plugin.*use a service-account token"):
        make(config)


def test_outside_a_pod_without_a_kubeconfig_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(KubernetesConfigError, match="not in a pod and no kubeconfig"):
        KubernetesProvider(image=IMAGE)


def test_an_unknown_context_is_a_config_error(kubeconfig):
    with pytest.raises(KubernetesConfigError, match="no context named 'prod'"):
        make(kubeconfig, context="prod")


# ---------------------------------------------------------------- the registry


def test_the_registry_builds_it_sized_from_the_queue(kube_api, kubeconfig, tmp_path):
    block = {"name": "kubernetes", "image": IMAGE, "kubeconfig": kubeconfig, "secret": "pandaflow-token"}
    provider = providers.build(block, script_dir=str(tmp_path / "s"), cores=2, memory_mb=14336)
    assert isinstance(provider, KubernetesProvider)
    assert (provider.cores_per_node, provider.mem_per_node) == (2, 14.0)
    provider.submit("true", 1, "p")
    resources = kube_api.calls("POST")[0].body["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "2", "memory": "14Gi"}


def test_queue_files_are_checked_against_its_parameters():
    with pytest.raises(providers.ProviderConfigError, match=r"q.provider.node_selector: expected"):
        providers.validate({"name": "kubernetes", "image": IMAGE, "node_selector": "spot"}, "q.provider")
    with pytest.raises(providers.ProviderConfigError, match=r"needs key\(s\) \['image'\]"):
        providers.validate({"name": "kubernetes"}, "q.provider")


def test_an_unknown_kind_is_refused_at_construction(kubeconfig):
    with pytest.raises(ValueError, match=r"kind must be one of \('job', 'pod'\), got 'deployment'"):
        make(kubeconfig, kind="deployment")
