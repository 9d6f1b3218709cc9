"""Pilots on HPC through function-as-a-service: :class:`GlobusComputeProvider` runs each pilot as a
function on a Globus Compute endpoint (``globus-compute-sdk``, the ``globus`` extra)."""

from pandaflow.providers.globus_compute.provider import GlobusComputeProvider, source_serializer

__all__ = ["GlobusComputeProvider", "source_serializer"]
