"""Pilots on Kubernetes (and GKE): :class:`KubernetesProvider` over the plain REST API."""

from pandaflow.providers.kubernetes.api import Connection, KubernetesApiError, KubernetesConfigError
from pandaflow.providers.kubernetes.provider import KubernetesProvider

__all__ = ["Connection", "KubernetesApiError", "KubernetesConfigError", "KubernetesProvider"]
