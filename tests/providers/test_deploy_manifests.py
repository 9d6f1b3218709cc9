"""deploy/kubernetes: every document parses and is well formed, references resolve (Secrets,
ConfigMaps, service accounts, selectors, ports), the command lines use real pandaflow options,
the harvester's Role allows every call the Kubernetes provider makes, and the queue ConfigMap
passes pandaflow's own queue validation."""

import json
from pathlib import Path

import pytest
import yaml
from support.kube_api import FakeKubeApi, write_kubeconfig

from pandaflow.cli import main as cli
from pandaflow.providers.kubernetes import KubernetesProvider
from pandaflow.server.jobs.queues import load_queues, parse_queues

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACED = {"Secret", "Service", "StatefulSet", "Deployment", "ConfigMap", "ServiceAccount", "Role",
              "RoleBinding"}  # fmt: skip


def documents():
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path.name, d) for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def find(kind, name):
    matches = [d for _f, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_specs():
    for _f, d in documents():
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]["spec"]


def container(kind, name):
    (c,) = find(kind, name)["spec"]["template"]["spec"]["containers"]
    return c


def options(args):
    return dict(a[2:].split("=", 1) for a in args[1:])


def kustomization():
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def deployed_image():
    (image,) = kustomization()["images"]
    return f"{image['newName']}:{image['newTag']}"


def configmap_queues():
    text = find("ConfigMap", "pandaflow-queues")["data"]["queues.json"]
    return parse_queues(json.loads(text), "queues-configmap.yaml")


def test_every_document_has_a_kind_a_name_and_the_namespace():
    docs = documents()
    assert len(docs) >= 12
    for filename, d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), filename
        assert d["metadata"].get("name"), filename
        if d["kind"] in NAMESPACED:
            assert d["metadata"].get("namespace") == "pandaflow", (
                f"{filename}: {d['kind']} {d['metadata']['name']}"
            )


def test_kustomization_applies_every_file_and_only_existing_ones():
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert kustomization()["namespace"] == "pandaflow"


def test_the_stack_is_server_postgres_and_harvester():
    assert find("Deployment", "pandaflow-server") and find("Service", "pandaflow-server")
    db = find("StatefulSet", "pandaflow-db")
    assert db["spec"]["serviceName"] == "pandaflow-db" and find("Service", "pandaflow-db")
    (claim,) = db["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"].endswith("Gi")
    assert container("StatefulSet", "pandaflow-db")["volumeMounts"][0]["name"] == claim["metadata"]["name"]
    assert container("Deployment", "pandaflow-harvester")["args"][0] == "harvester"
    assert container("Deployment", "pandaflow-server")["args"][0] == "server"


def test_workload_selectors_match_their_pod_labels_and_services_find_pods():
    labels = []
    for d, _spec in pod_specs():
        template = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= template.items(), d["metadata"]["name"]
        labels.append((template, d))
    for _f, svc in documents():
        if svc["kind"] != "Service":
            continue
        targets = [d for template, d in labels if svc["spec"]["selector"].items() <= template.items()]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


def test_every_secret_configmap_and_service_account_referenced_exists():
    for d, spec in pod_specs():
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                find("Secret", volume["secret"]["secretName"])
            if "configMap" in volume:
                find("ConfigMap", volume["configMap"]["name"])
        for c in spec["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = find("Secret", ref["name"])
                    assert ref["key"] in secret.get("stringData", secret.get("data", {})), d["metadata"][
                        "name"
                    ]
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])} | {
                t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])
            }
        if spec.get("serviceAccountName"):
            find("ServiceAccount", spec["serviceAccountName"])


@pytest.mark.parametrize(
    "kind, name", [("Deployment", "pandaflow-server"), ("Deployment", "pandaflow-harvester")]
)
def test_command_lines_use_real_pandaflow_options(kind, name):
    args = container(kind, name)["args"]
    command = cli.commands[args[0]]
    known = {opt for p in command.params for opt in p.opts}
    assert {"--" + key for key in options(args)} <= known


def test_the_harvester_and_its_pilots_share_the_token_path_the_image_and_find_the_server():
    harvester = options(container("Deployment", "pandaflow-harvester")["args"])
    server = container("Deployment", "pandaflow-server")
    token_mounts = {m["mountPath"] for m in container("Deployment", "pandaflow-harvester")["volumeMounts"]}
    for queue in configmap_queues():
        block = queue.setting("provider")
        mount = block.get("secret_mount_path", "/var/run/pandaflow")
        assert harvester["token-file"] == f"{mount}/{block.get('secret_key', 'token')}"
        assert mount in token_mounts
        assert block["image"] == deployed_image(), queue.name
        find("Secret", block["secret"])
        find("ServiceAccount", block["service_account_name"])
    zmq = next(p for p in find("Service", "pandaflow-server")["spec"]["ports"] if p["name"] == "zmq")
    assert harvester["zmq"] == f"tcp://pandaflow-server.pandaflow.svc:{zmq['port']}"
    assert options(server["args"])["zmq-port"] == str(zmq["port"])
    assert container("Deployment", "pandaflow-harvester")["image"] == server["image"] == "pandaflow"


def test_the_queue_configmap_passes_queue_validation_and_matches_the_shipped_table():
    deployed = {q.name: q for q in configmap_queues()}
    shipped = {q.name: q for q in load_queues(ROOT / "configs" / "queues" / "google_idf.json")}
    assert deployed.keys() == shipped.keys()
    for name, q in shipped.items():
        d = deployed[name]
        assert (d.min_memory_mb, d.max_memory_mb, d.brokerage, d.setting("preemptible")) == (
            q.min_memory_mb, q.max_memory_mb, q.brokerage, q.setting("preemptible")
        )  # fmt: skip
    server_args = options(container("Deployment", "pandaflow-server")["args"])
    mounts = {m["name"]: m["mountPath"] for m in container("Deployment", "pandaflow-server")["volumeMounts"]}
    assert server_args["queues"] == f"{mounts['queues']}/queues.json"


def test_spot_queues_land_on_tolerated_spot_pools_and_the_others_do_not():
    for q in configmap_queues():
        block = q.setting("provider")
        assert block["node_selector"]["cloud.google.com/gke-nodepool"] == q.setting("batch_queue")
        spot = block["node_selector"].get("cloud.google.com/gke-spot") == "true"
        assert spot == q.setting("preemptible") == bool(block.get("tolerations")), q.name


def _verbs_the_provider_uses(tmp_path, kind):
    with FakeKubeApi(token="t") as api:
        provider = KubernetesProvider(
            image="pilot",
            kind=kind,
            kubeconfig=write_kubeconfig(tmp_path / "kc", api.url, user={"token": "t"}),
        )
        name = provider.submit("true", 1, "p")
        provider.status([name, "gone-abcdef"])  # listed, and read by name
        provider.cancel([name])
    used = set()
    for r in api.requests:
        group = "batch" if r.path.startswith("/apis/batch/") else ""
        parts = r.path.strip("/").split("/")
        resource_at = parts.index("namespaces") + 2
        named = len(parts) > resource_at + 1
        verb = {"POST": "create", "DELETE": "delete", "GET": "get" if named else "list"}[r.method]
        used.add((group, parts[resource_at], verb))
    return used


@pytest.mark.parametrize("kind", ["job", "pod"])
def test_the_harvesters_role_allows_every_call_the_provider_makes(tmp_path, kind):
    role = find("Role", "pandaflow-harvester")
    allowed = {(g, res, v) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
               for v in rule["verbs"]}  # fmt: skip
    used = _verbs_the_provider_uses(tmp_path, kind)
    assert used and used <= allowed, used - allowed
    binding = find("RoleBinding", "pandaflow-harvester")
    assert binding["roleRef"]["name"] == "pandaflow-harvester"
    (subject,) = binding["subjects"]
    harvester_spec = find("Deployment", "pandaflow-harvester")["spec"]["template"]["spec"]
    assert subject["name"] == harvester_spec["serviceAccountName"]


def test_pilots_get_no_kubernetes_rights():
    pilot = find("ServiceAccount", "pandaflow-pilot")
    assert pilot.get("automountServiceAccountToken") is False
    for _f, d in documents():
        if d["kind"] == "RoleBinding":
            assert all(s["name"] != "pandaflow-pilot" for s in d["subjects"])
