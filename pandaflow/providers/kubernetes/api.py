"""The few Kubernetes REST calls the provider makes, over plain HTTPS with ``requests``.

No Kubernetes client library: the provider creates, lists, reads and deletes Jobs and Pods, which
is five URL shapes. Where to connect and how to authenticate comes in one of two minimal forms:

* **in-cluster** (the harvester runs in a pod): ``$KUBERNETES_SERVICE_HOST``/``_PORT``, the pod's
  service-account token and CA under ``/var/run/secrets/kubernetes.io/serviceaccount/``; the token
  file is re-read on every call because the kubelet rotates it;
* **a kubeconfig file**: the current (or named) context's cluster ``server``, its
  ``certificate-authority`` / ``certificate-authority-data`` / ``insecure-skip-tls-verify``, and
  its user's ``token`` / ``tokenFile`` or ``client-certificate(-data)`` + ``client-key(-data)``.
  ``exec`` and ``auth-provider`` plugins (e.g. GKE's ``gke-gcloud-auth-plugin``) are not run:
  give the harvester a service-account token instead (``docs/kubernetes.md``).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from parsl.providers.errors import ExecutionProviderException

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesConfigError(ValueError):
    """No usable API server address or credentials; the message says where it looked."""


class KubernetesApiError(ExecutionProviderException):
    """The API server refused a call (or could not be reached): HTTP status, reason, message."""

    def __init__(self, method: str, path: str, status: int | None, reason: str, message: str):
        self.status, self.reason = status, reason
        where = f"{method} {path}"
        super().__init__(
            f"{where}: HTTP {status} {reason}: {message}" if status else f"{where}: {reason}: {message}"
        )


@dataclass
class Connection:
    """Where the API server is and how to authenticate to it."""

    server: str  # https://host:port (http:// only for tests and local proxies)
    token: str | None = None
    token_file: str | None = None  # read on every call (rotated service-account tokens)
    verify: bool | str = True  # CA bundle path, True (system CAs) or False (insecure-skip-tls-verify)
    client_cert: tuple[str, str] | None = None  # (certificate file, key file)
    namespace: str | None = None  # the in-cluster pod's, or the context's namespace
    source: str = ""  # for messages: "in-cluster" or the kubeconfig path and context
    _files: list[str] = field(default_factory=list, repr=False)  # decoded *-data, kept for requests

    def bearer(self) -> str | None:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise KubernetesConfigError(
                    f"{self.source}: cannot read token file {self.token_file}: {exc}"
                ) from None
        return self.token


def in_cluster(base: Path = SERVICE_ACCOUNT_DIR, environ: dict[str, str] | None = None) -> Connection:
    """The connection of a pod: the service environment variables and the mounted service account."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubernetesConfigError("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST is not set")
    token = base / "token"
    if not token.exists():
        raise KubernetesConfigError(f"in-cluster: no service-account token at {token}; is one mounted?")
    ca = base / "ca.crt"
    namespace = base / "namespace"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return Connection(
        server=f"https://{host}:{port}",
        token_file=str(token),
        verify=str(ca) if ca.exists() else True,
        namespace=namespace.read_text().strip() if namespace.exists() else None,
        source="in-cluster",
    )


def from_kubeconfig(path: str | os.PathLike, context: str | None = None) -> Connection:
    """The connection a kubeconfig file's current (or given) context describes."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise KubernetesConfigError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
    try:
        import yaml
    except ImportError:  # kubeconfig files are YAML, but JSON ones need no parser
        yaml = None
    try:
        data = yaml.safe_load(text) if yaml else json.loads(text)
    except Exception as exc:
        raise KubernetesConfigError(f"{path}: not a kubeconfig file: {exc}") from None
    if not isinstance(data, dict):
        raise KubernetesConfigError(f"{path}: not a kubeconfig file (expected a mapping)")
    name = context or data.get("current-context")
    if not name:
        raise KubernetesConfigError(f"{path}: no current-context; pass the context to use")
    ctx = _named(data, "contexts", name, "context", path)
    cluster = _named(data, "clusters", ctx.get("cluster"), "cluster", path)
    user = _named(data, "users", ctx.get("user"), "user", path) if ctx.get("user") else {}
    where = f"{path} (context {name!r})"
    if "server" not in cluster:
        raise KubernetesConfigError(f"{where}: cluster {ctx.get('cluster')!r} has no server")
    if "exec" in user or "auth-provider" in user:
        raise KubernetesConfigError(
            f"{where}: user {ctx.get('user')!r} authenticates through a plugin, which pandaflow does not "
            "run; use a service-account token (token: or tokenFile:) instead, see docs/kubernetes.md"
        )
    conn = Connection(server=str(cluster["server"]).rstrip("/"), namespace=ctx.get("namespace"), source=where)
    base = path.parent
    if cluster.get("insecure-skip-tls-verify"):
        conn.verify = False
    elif "certificate-authority-data" in cluster:
        conn.verify = _decoded(conn, cluster["certificate-authority-data"], "ca")
    elif "certificate-authority" in cluster:
        conn.verify = str(base / cluster["certificate-authority"])
    if "token" in user:
        conn.token = str(user["token"])
    elif "tokenFile" in user:
        conn.token_file = str(base / user["tokenFile"])
    cert = user.get("client-certificate-data") and _decoded(conn, user["client-certificate-data"], "crt")
    cert = cert or (user.get("client-certificate") and str(base / user["client-certificate"]))
    key = user.get("client-key-data") and _decoded(conn, user["client-key-data"], "key")
    key = key or (user.get("client-key") and str(base / user["client-key"]))
    if cert and key:
        conn.client_cert = (cert, key)
    return conn


def _named(data: dict[str, Any], section: str, name: Any, inner: str, path: Path) -> dict[str, Any]:
    for entry in data.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get(inner) or {}
    raise KubernetesConfigError(f"{path}: no {inner} named {name!r} in {section}")


def _decoded(conn: Connection, data: str, suffix: str) -> str:
    """``requests`` takes CA bundles and client certificates as files: write the decoded data."""
    fd, name = tempfile.mkstemp(prefix="pandaflow-kube-", suffix=f".{suffix}")
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data))
    conn._files.append(name)
    weakref.finalize(conn, _unlink, name)
    return name


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def discover(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """A kubeconfig when one is named; else in-cluster when in a pod; else ``$KUBECONFIG`` or
    ``~/.kube/config``."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
        return in_cluster()
    default = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    if not Path(default).expanduser().exists():
        raise KubernetesConfigError(
            f"no Kubernetes API to talk to: not in a pod and no kubeconfig at {default}; "
            "give the provider 'kubeconfig'"
        )
    return from_kubeconfig(default, context)


class KubeApi:
    """JSON over HTTPS to one API server; every refusal is a :class:`KubernetesApiError`."""

    def __init__(self, connection: Connection, timeout: float = 30.0):
        self.connection = connection
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "pandaflow-harvester"})

    def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        headers = {}
        token = self.connection.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self.session.request(
                method, self.connection.server + path, json=body, params=params, headers=headers,
                timeout=self.timeout,
                # Per request: a session's verify loses to $REQUESTS_CA_BUNDLE, the cluster's CA must not.
                verify=self.connection.verify, cert=self.connection.client_cert,
            )  # fmt: skip
        except requests.RequestException as exc:
            raise KubernetesApiError(method, path, None, type(exc).__name__, str(exc)) from None
        if response.status_code >= 400:
            reason, message = response.reason, response.text[:500]
            try:  # the API server explains itself in a Status object
                status = response.json()
                reason, message = status.get("reason") or reason, status.get("message") or message
            except ValueError:
                pass
            raise KubernetesApiError(method, path, response.status_code, reason, message)
        return response.json() if response.content else None

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body=body)

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def list(self, path: str, label_selector: str) -> list[dict[str, Any]]:
        """Every item under ``path`` with those labels, following ``continue`` tokens."""
        items: list[dict[str, Any]] = []
        params = {"labelSelector": label_selector, "limit": "500"}
        while True:
            page = self.request("GET", path, params=params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": token}

    def delete(self, path: str, propagation: str = "Background") -> bool:
        """Delete one object and its dependents; False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            self.request("DELETE", path, body=body)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
