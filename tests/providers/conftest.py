"""Provider fixtures: a fake Kubernetes API server (plain HTTP, or HTTPS with a throwaway
self-signed certificate that doubles as its CA) and kubeconfig files pointing at it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support.kube_api import TOKEN, FakeKubeApi, write_kubeconfig


@pytest.fixture
def kube_api():
    with FakeKubeApi(token=TOKEN) as api:
        yield api


@pytest.fixture
def kubeconfig(tmp_path, kube_api):
    """A kubeconfig whose current context is the fake API server, namespace ``pilots``."""
    return write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory):
    """(certificate, key) for 127.0.0.1, made with the openssl command."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "server.crt", where / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
