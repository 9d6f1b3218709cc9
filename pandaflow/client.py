"""A small REST client of the pandaflow job server (``/api/v1``), used by the CLI and bps, and
:func:`discover`, how pilots, harvesters and executors find the server's ZeroMQ endpoint.

Read methods are named and shaped like the functions of :mod:`pandaflow.server.front.queries` (minus
the connection) and return the same dicts, so a caller can read from a server or straight from
a database with the same code. Every failure raises :class:`ClientError` with the server's own
message, or with what to do when the server cannot be reached.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import requests

API_PREFIX = "/api/v1"


class ClientError(RuntimeError):
    """A request failed; the message is the server's ``error`` (or why there was no answer)."""

    def __init__(self, message: str, status: int | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.problems = problems or []


def _drop_none(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class Client:
    """Talks to one pandaflow server at ``url`` (e.g. ``http://127.0.0.1:8800``) with ``token``."""

    def __init__(
        self, url: str, token: str | None, timeout: float = 30.0, session: requests.Session | None = None
    ):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()

    # ---------------------------------------------------------------- transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        accept: str = "application/json",
    ) -> requests.Response:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            reply = self.session.request(
                method,
                self.url + API_PREFIX + path,
                params=_drop_none(params or {}),
                json=body,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.ConnectionError:
            raise ClientError(
                f"cannot reach pandaflow server at {self.url}: is it running? "
                "start it with `pandaflow server`"
            ) from None
        except requests.Timeout:
            raise ClientError(
                f"pandaflow server at {self.url} did not answer within {self.timeout:g} s"
            ) from None
        except requests.RequestException as exc:
            raise ClientError(f"request to pandaflow server at {self.url} failed: {exc}") from None
        if reply.status_code >= 400:
            raise self._error(reply)
        return reply

    def _error(self, reply: requests.Response) -> ClientError:
        try:
            data = reply.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            message = data["error"]
            if reply.status_code == 401:
                message += " (pass --token or set PANDAFLOW_TOKEN to the server's token)"
            return ClientError(message, reply.status_code, data.get("problems"))
        snippet = reply.text.strip().replace("\n", " ")[:200]
        return ClientError(
            f"{self.url} answered HTTP {reply.status_code} without a pandaflow error message "
            f"(is it a pandaflow server?): {snippet}",
            reply.status_code,
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self._request(method, path, **kwargs)
        try:
            return reply.json()
        except ValueError:
            raise ClientError(f"{self.url} answered {path} with something that is not JSON") from None

    # ---------------------------------------------------------------- server

    def info(self) -> dict[str, Any]:
        """Server version and ZeroMQ endpoint."""
        return self._json("GET", "/info")

    def discover_zmq(self, wait: float = 30.0) -> str:
        """The server's ZeroMQ endpoint (``info()["zmq"]``), asked again every 0.5 s for up to
        ``wait`` seconds while the server is starting.

        Raises :class:`ClientError` at once if the server refuses the token, and once ``wait``
        has passed without an answer.
        """
        deadline = time.time() + wait
        last = ""
        while time.time() < deadline:
            try:
                return self.info()["zmq"]
            except ClientError as exc:
                if exc.status == 401:
                    raise ClientError(f"server {self.url} refused the token (401)", 401) from None
                last = str(exc)
            except (KeyError, TypeError) as exc:  # an answer without an endpoint: not ready yet
                last = f"no ZeroMQ endpoint in the answer ({type(exc).__name__}: {exc})"
            time.sleep(0.5)
        raise ClientError(f"cannot reach server {self.url} within {wait:g} s: {last}")

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        return self._json("GET", "/openapi.json")

    def error_codes(self) -> dict[str, Any]:
        """``{"error_codes": [...]}``: every error code with its meaning."""
        return self._json("GET", "/errorcodes")

    def summary(self) -> dict[str, Any]:
        """Jobs by state, pilots by state and queues."""
        return self._json("GET", "/summary")

    # ---------------------------------------------------------------- workflows and tasks

    def submit(
        self,
        name: str,
        jobs: list[dict[str, Any]],
        owner: str | None = None,
        available: Sequence[str] | None = None,
        sites: dict[str, float] | None = None,
        site: str | None = None,
    ) -> dict[str, Any]:
        """Submit a workflow (all jobs or none); returns ``{"workflow_id", "job_ids", "duplicates"}``
        (and ``"sites"``, jobs per site, with ``sites`` or ``site``).

        Jobs may carry ``inputs``/``outputs``/``parents``; ``available`` names data products that
        exist already (see :mod:`pandaflow.dagfile` for the whole DAG file format). ``sites``
        spreads the jobs over sites by share (``{"FrDF": 0.5, "USDF": 0.5}``), ``site`` pins them
        to one (see :mod:`pandaflow.server.jobs.sites`).
        """
        body: dict[str, Any] = {"name": name, "jobs": jobs}
        if owner is not None:
            body["owner"] = owner
        if available:
            body["available"] = list(available)
        if sites is not None:
            body["sites"] = sites
        if site is not None:
            body["site"] = site
        return self._json("POST", "/workflows", body=body)

    def list_workflows(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of workflows, newest first."""
        return self._json("GET", "/workflows", params={"limit": limit, "offset": offset})

    def get_workflow(self, workflow_id: int) -> dict[str, Any]:
        """One workflow with its tasks."""
        return self._json("GET", f"/workflows/{int(workflow_id)}")

    def workflow_tasks(self, workflow_id: int, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of one workflow's tasks."""
        return self._json(
            "GET", f"/workflows/{int(workflow_id)}/tasks", params={"limit": limit, "offset": offset}
        )

    def list_tasks(self, workflow_id: int | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of tasks, optionally of one workflow."""
        return self._json(
            "GET", "/tasks", params={"workflow_id": workflow_id, "limit": limit, "offset": offset}
        )

    def report(self, workflow_id: int) -> dict[str, Any]:
        """A workflow's jobs by task (label) and BPS state: the data of ``bps report``."""
        return self._json("GET", f"/workflows/{int(workflow_id)}/report")

    def cancel_workflow(self, workflow_id: int, task: str | None = None) -> dict[str, Any]:
        """Cancel every job of a workflow (or of one of its tasks) that has not ended."""
        return self._json("POST", f"/workflows/{int(workflow_id)}/cancel", body=_drop_none({"task": task}))

    def retry_workflow(
        self, workflow_id: int, extra_attempts: int = 1, task: str | None = None
    ) -> dict[str, Any]:
        """Retry every failed or cancelled job of a workflow (or of one of its tasks)."""
        body = _drop_none({"extra_attempts": extra_attempts, "task": task})
        return self._json("POST", f"/workflows/{int(workflow_id)}/retry", body=body)

    def hold_workflow(self, workflow_id: int, task: str | None = None) -> dict[str, Any]:
        """Hold the waiting jobs of a workflow (or of one of its tasks): not dispatched, not pruned."""
        return self._json("POST", f"/workflows/{int(workflow_id)}/hold", body=_drop_none({"task": task}))

    def release_workflow(self, workflow_id: int, task: str | None = None) -> dict[str, Any]:
        """Release the held jobs of a workflow (or of one of its tasks)."""
        return self._json("POST", f"/workflows/{int(workflow_id)}/release", body=_drop_none({"task": task}))

    # ---------------------------------------------------------------- jobs

    def list_jobs(
        self,
        *,
        workflow_id: int | None = None,
        task_id: int | None = None,
        status: str | Sequence[str] | None = None,
        queue: str | None = None,
        pilot_id: int | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of jobs ordered by id; ``status`` may be one state or several."""
        if status is not None and not isinstance(status, str):
            status = ",".join(status)
        params = {"workflow_id": workflow_id, "task_id": task_id, "status": status, "queue": queue,
                  "pilot_id": pilot_id, "name": name, "limit": limit, "offset": offset}  # fmt: skip
        return self._json("GET", "/jobs", params=params)

    def get_job(self, job_id: int) -> dict[str, Any]:
        """One job with its attempt history."""
        return self._json("GET", f"/jobs/{int(job_id)}")

    def get_log(self, job_id: int, attempt: int | None = None) -> dict[str, Any]:
        """``{"job_id", "attempt", "source", "text"}`` of the latest (or given) attempt."""
        return self._json("GET", f"/jobs/{int(job_id)}/log", params={"attempt": attempt})

    def log_text(self, job_id: int, attempt: int | None = None) -> str:
        """Just the log text of the latest (or given) attempt."""
        reply = self._request(
            "GET", f"/jobs/{int(job_id)}/log", params={"attempt": attempt}, accept="text/plain"
        )
        return reply.text

    def cancel_jobs(self, ids: Sequence[int]) -> dict[str, Any]:
        """Cancel jobs by id; ``{"changed": [...], "skipped": [...]}``."""
        return self._json("POST", "/jobs/cancel", body={"ids": list(ids)})

    def retry_jobs(self, ids: Sequence[int], extra_attempts: int = 1) -> dict[str, Any]:
        """Retry failed or cancelled jobs by id."""
        return self._json("POST", "/jobs/retry", body={"ids": list(ids), "extra_attempts": extra_attempts})

    def hold_jobs(self, ids: Sequence[int]) -> dict[str, Any]:
        """Hold waiting jobs by id."""
        return self._json("POST", "/jobs/hold", body={"ids": list(ids)})

    def release_jobs(self, ids: Sequence[int]) -> dict[str, Any]:
        """Release held jobs by id."""
        return self._json("POST", "/jobs/release", body={"ids": list(ids)})

    def job_events(self, job_id: int) -> dict[str, Any]:
        """A job's timeline: its submission and every change of its state."""
        return self._json("GET", f"/jobs/{int(job_id)}/events")

    def error_summary(self, workflow_id: int | None = None) -> dict[str, Any]:
        """Errors grouped by task and error code."""
        return self._json("GET", "/errors", params={"workflow_id": workflow_id})

    # ---------------------------------------------------------------- pilots and queues

    def list_pilots(
        self, status: str | None = None, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        """A page of pilots, newest first."""
        return self._json(
            "GET", "/pilots", params={"status": status, "queue": queue, "limit": limit, "offset": offset}
        )

    def list_queues(self) -> dict[str, Any]:
        """Queues with live job and pilot counts and each harvester's last cycle on them."""
        return self._json("GET", "/queues")

    def list_workers(
        self,
        queue: str | None = None,
        state: str | Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of harvester workers, newest first, and the queues' harvester status."""
        if state is not None and not isinstance(state, str):
            state = ",".join(state)
        params = {"queue": queue, "state": state, "limit": limit, "offset": offset}
        return self._json("GET", "/workers", params=params)

    # ---------------------------------------------------------------- loops

    def open_loop(
        self,
        name: str,
        kind: str,
        config: dict[str, Any],
        budget: int,
        direction: str = "",
        workflow: str = "",
        owner: str = "",
    ) -> dict[str, Any]:
        """Create the loop ``name`` or resume it (same ``kind``, ``config`` and ``direction``, else a
        409 :class:`ClientError`); returns the loop as :meth:`get_loop` does."""
        body = {"name": name, "kind": kind, "config": config, "budget": budget, "direction": direction,
                "workflow": workflow, "owner": owner}  # fmt: skip
        return self._json("POST", "/loops", body=body)

    def record_trials(self, name: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
        """Record trials of a loop (all or none): each ``{"number", "params"?, "state"?, "value"?,
        "error"?, "attempts"?, "iteration"?, "job_uid"?}``; ``params`` the first time."""
        return self._json("POST", f"/loops/{name}/trials", body={"trials": trials})

    def end_loop(
        self, name: str, status: str, message: str = "", summary: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record how a loop ended: ``finished``, ``failed`` or ``stopped``."""
        body: dict[str, Any] = {"status": status, "message": message}
        if summary is not None:
            body["summary"] = summary
        return self._json("POST", f"/loops/{name}/end", body=body)

    def list_loops(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of loops, newest first, with their progress and best trial."""
        return self._json("GET", "/loops", params={"limit": limit, "offset": offset})

    def get_loop(self, name: str) -> dict[str, Any]:
        """One loop: settings, trial counts, progress, best trial, summary."""
        return self._json("GET", f"/loops/{name}")

    def list_trials(
        self, name: str, state: str | None = None, order: str = "number", limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        """A page of a loop's trials, by number or (``order="value"``) best first."""
        params = {"state": state, "order": order, "limit": limit, "offset": offset}
        return self._json("GET", f"/loops/{name}/trials", params=params)


def discover(server_url: str, token: str | None, timeout: float = 30.0) -> str:
    """The ZeroMQ endpoint of the server whose REST API is at ``server_url``, retrying until
    ``timeout`` (see :meth:`Client.discover_zmq`); each request waits at most 5 s."""
    return Client(server_url, token, timeout=5.0).discover_zmq(timeout)
