"""A fake Kubernetes API server at the HTTP level: a threaded server on 127.0.0.1 that implements
the endpoints pandaflow's Kubernetes provider uses, checks what it is sent the way the real API
server would refuse it (kinds, names, namespaces, quantities, delete options, bearer token), and
records every request.

Jobs never start by themselves: a test plays the Job controller and the kubelet with
:meth:`FakeKubeApi.start_pod`, :meth:`FakeKubeApi.finish`, etc.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import ssl
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

_COLLECTIONS = {
    re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$"): ("batch/v1", "Job"),
    re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$"): ("v1", "Pod"),
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_PROPAGATION = {"Background", "Foreground", "Orphan"}
TOKEN = "fake-token"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None


class FakeKubeApi:
    """``with FakeKubeApi(token="t") as api: api.url ...``; objects in ``api.objects[(kind, ns, name)]``."""

    def __init__(self, token: str | None = "fake-token", tls: tuple[str, str] | None = None, page: int = 0):
        self.token = token
        self.page = page  # list page size forced on clients (0: the client's limit)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.failures: list[tuple[str, str, int, str, str]] = []  # (method, path prefix, code, reason, msg)
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self._clock = itertools.count()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---------------------------------------------------------------- what tests look at
    def calls(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]

    def fail_next(self, method: str, path_prefix: str, code: int, reason: str, message: str) -> None:
        """Refuse the next matching request with a ``Status`` object, as the API server does."""
        self.failures.append((method, path_prefix, code, reason, message))

    def get(self, kind: str, name: str, namespace: str = "pilots") -> dict[str, Any]:
        return self.objects[(kind, namespace, name)]

    def names(self, kind: str) -> list[str]:
        return [n for (k, _ns, n) in self.objects if k == kind]

    # ---------------------------------------------------------------- playing the controllers
    def start_pod(self, job: str, namespace: str = "pilots", phase: str = "Pending", **status: Any) -> str:
        """The Job controller creates the Job's pod; returns the pod's name."""
        obj = self.get("Job", job, namespace)
        template = obj["spec"]["template"]
        name = f"{job}-{uuid.uuid4().hex[:5]}"
        labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": job}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "ownerReferences": [{"kind": "Job", "name": job, "uid": obj["metadata"]["uid"]}]},
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": phase, **status},
        }  # fmt: skip
        self._stamp(pod)
        with self._lock:
            self.objects[("Pod", namespace, name)] = pod
            obj["status"]["active"] = 1
        return name

    def pods_of(self, job: str, namespace: str = "pilots") -> list[dict[str, Any]]:
        key = "batch.kubernetes.io/job-name"
        return [
            o for (k, ns, _n), o in self.objects.items()
            if k == "Pod" and ns == namespace and o["metadata"]["labels"].get(key) == job
        ]  # fmt: skip

    def set_pod(self, name: str, namespace: str = "pilots", **status: Any) -> None:
        with self._lock:
            self.objects[("Pod", namespace, name)]["status"] = status

    def set_job_condition(self, job: str, kind: str, reason: str = "", message: str = "", ns: str = "pilots"):
        with self._lock:
            status = self.objects[("Job", ns, job)]["status"]
            status.setdefault("conditions", []).append(
                {"type": kind, "status": "True", "reason": reason, "message": message}
            )
            status["active"] = 0

    # ---------------------------------------------------------------- the API
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._status(h, 400, "BadRequest", "the body is not JSON")
        with self._lock:
            self.requests.append(Recorded(h.command, parts.path, query, body, h.headers.get("Authorization")))
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(h, 401, "Unauthorized", "Unauthorized")
        for i, (method, prefix, code, reason, message) in enumerate(self.failures):
            if method == h.command and parts.path.startswith(prefix):
                del self.failures[i]
                return self._status(h, code, reason, message)
        for pattern, (api_version, kind) in _COLLECTIONS.items():  # noqa: B007 (used after the loop)
            match = pattern.match(parts.path)
            if match:
                break
        else:
            return self._status(
                h, 404, "NotFound", f"the server could not find the requested resource {parts.path}"
            )
        namespace, name = match.group(1), match.group(2)
        if h.command == "POST" and name is None:
            return self._create(h, api_version, kind, namespace, body)
        if h.command == "GET" and name is None:
            return self._list(h, kind, namespace, query)
        if h.command == "GET":
            obj = self.objects.get((kind, namespace, name))
            if obj is None:
                return self._status(h, 404, "NotFound", f'{kind.lower()}s "{name}" not found')
            return self._send(h, 200, obj)
        if h.command == "DELETE" and name:
            return self._delete(h, kind, namespace, name, body)
        return self._status(h, 405, "MethodNotAllowed", f"{h.command} is not supported here")

    def _create(self, h, api_version: str, kind: str, namespace: str, body: Any) -> None:
        problems = _invalid(body, api_version, kind, namespace)
        if problems:
            return self._status(h, 422, "Invalid", f"{kind} is invalid: " + "; ".join(problems))
        name = body["metadata"]["name"]
        if (kind, namespace, name) in self.objects:
            return self._status(h, 409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists')
        obj = copy.deepcopy(body)
        obj["status"] = {"phase": "Pending"} if kind == "Pod" else {}
        self._stamp(obj)
        with self._lock:
            self.objects[(kind, namespace, name)] = obj
        return self._send(h, 201, obj)

    def _list(self, h, kind: str, namespace: str, query: dict[str, str]) -> None:
        wanted = _selector(query.get("labelSelector", ""))
        ordered = sorted(self.objects.items(), key=lambda kv: kv[1]["metadata"]["resourceVersion"])
        items = [
            o for (k, ns, _n), o in ordered
            if k == kind and ns == namespace and wanted.items() <= o["metadata"].get("labels", {}).items()
        ]  # fmt: skip
        start = int(query.get("continue") or 0)
        size = self.page or int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + size]
        meta = {"resourceVersion": str(next(self._versions))}
        if start + size < len(items):
            meta["continue"] = str(start + size)
        return self._send(
            h, 200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": meta, "items": page}
        )

    def _delete(self, h, kind: str, namespace: str, name: str, body: Any) -> None:
        if body is not None and (
            body.get("kind") != "DeleteOptions" or body.get("propagationPolicy") not in _PROPAGATION
        ):
            return self._status(h, 400, "BadRequest", f"invalid DeleteOptions: {body!r}")
        with self._lock:
            obj = self.objects.pop((kind, namespace, name), None)
        if obj is None:
            return self._status(h, 404, "NotFound", f'{kind.lower()}s "{name}" not found')
        policy = (body or {}).get("propagationPolicy")
        if kind == "Job" and policy in ("Background", "Foreground"):
            for pod in self.pods_of(name, namespace):
                self.objects.pop(("Pod", namespace, pod["metadata"]["name"]), None)
        return self._send(h, 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                                   "details": {"name": name, "kind": kind.lower() + "s"}})  # fmt: skip

    def _stamp(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self._versions)).zfill(8)
        second = next(self._clock)
        meta["creationTimestamp"] = datetime.fromtimestamp(1_700_000_000 + second, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )

    def _send(self, h, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, h, code: int, reason: str, message: str) -> None:
        self._send(h, code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                             "message": message, "code": code})  # fmt: skip


def _selector(text: str) -> dict[str, str]:
    pairs = [p for p in text.split(",") if p]
    return dict(p.split("=", 1) for p in pairs)


def _invalid(body: Any, api_version: str, kind: str, namespace: str) -> list[str]:
    """What the real API server's validation would say about the few fields that matter here."""
    if not isinstance(body, dict):
        return ["body must be an object"]
    problems = []
    if body.get("apiVersion") != api_version or body.get("kind") != kind:
        problems.append(
            f"apiVersion/kind must be {api_version}/{kind}, got {body.get('apiVersion')}/{body.get('kind')}"
        )
    meta = body.get("metadata") or {}
    name = meta.get("name", "")
    if not _DNS_LABEL.match(name) or len(name) > 63:
        problems.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label")
    if meta.get("namespace", namespace) != namespace:
        problems.append("metadata.namespace: does not match the namespace of the request")
    for key, value in (meta.get("labels") or {}).items():
        if len(value) > 63:
            problems.append(f"metadata.labels[{key}]: must be no more than 63 characters")
    spec = body.get("spec") or {}
    if kind == "Job":
        template = spec.get("template") or {}
        if template.get("spec", {}).get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append("spec.template.spec.restartPolicy: Unsupported value: must be Never or OnFailure")
        spec = template.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        problems.append("spec.containers: Required value")
    for c in containers:
        if not c.get("image"):
            problems.append(f"spec.containers[{c.get('name')}].image: Required value")
        for part in ("requests", "limits"):
            for resource, quantity in (c.get("resources", {}).get(part) or {}).items():
                if not isinstance(quantity, str) or not _QUANTITY.match(quantity):
                    problems.append(
                        f"resources.{part}[{resource}]: quantities must match the regular expression"
                    )
        for var in c.get("env") or []:
            if "value" in var and not isinstance(var["value"], str):
                problems.append(f"env[{var.get('name')}].value: must be a string")
    return problems


def write_kubeconfig(path, server: str, *, user: dict | None = None, cluster: dict | None = None,
                     namespace: str | None = "pilots") -> str:  # fmt: skip
    context = {"cluster": "fake", "user": "harvester"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server, **(cluster or {})}}],
        "contexts": [{"name": "fake", "context": context}],
        "users": [{"name": "harvester", "user": user if user is not None else {"token": TOKEN}}],
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()
