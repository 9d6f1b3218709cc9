"""Pilots on Google Cloud Batch: :class:`GoogleBatchProvider`, through Google's client library
(``google-cloud-batch``, the ``gcp`` extra). Pilots on GKE use the Kubernetes provider."""

from pandaflow.providers.googlecloud.provider import GoogleBatchProvider, job_status

__all__ = ["GoogleBatchProvider", "job_status"]
