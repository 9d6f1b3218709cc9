"""Helpers the tests share, importable as ``support`` (``pythonpath = ["tests"]`` in pyproject.toml):

- :mod:`support.waiting`    ``wait_until`` (poll until true), ``connected`` (an executor reached its server)
- :mod:`support.ports`      ``free_port``
- :mod:`support.databases`  database URLs: SQLite files, throwaway PostgreSQL databases
- :mod:`support.servers`    a job server in the test process (REST and dispatcher threads)
- :mod:`support.processes`  a job server and pilots as subprocesses, and tagging what a test started
- :mod:`support.lookups`    read-only looks into a job database (rows, jobs, attempts)
- :mod:`support.workload`   jobs put into any state through the server's own modules
- :mod:`support.peers`      stand-ins for the other side: a ZeroMQ peer, the dispatcher, a REST session
- :mod:`support.harvest`    a provider double and queue helpers for the harvester tests
- :mod:`support.kube_api`   a fake Kubernetes API server

Fixtures stay in the ``conftest.py`` files; they build on these.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
"""The ``tests`` directory: what a subprocess needs on its ``PYTHONPATH`` to import :mod:`support`."""
