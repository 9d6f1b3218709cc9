"""REST API ``/api/v1``: bulk submission, read queries, cancel/retry/hold/release, job
timelines, and its OpenAPI document.

Every route needs ``Authorization: Bearer <token>``. Every answer is JSON (job logs are
``text/plain`` unless JSON is asked for), errors included: a user error is a 4xx
``{"error": "..."}`` saying what was wrong and what to do; a bug is a 500
``{"error": "internal error: ..."}`` that is logged with its stack trace. Read routes return
the dicts of :mod:`pandaflow.server.queries` unchanged, so the CLI's ``--db`` mode prints the
same JSON as the server.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from pandaflow.server import collector, control, queries, sites, submission
from pandaflow.server import schema as s
from pandaflow.server.openapi import document as openapi_document

log = logging.getLogger(__name__)

api = Blueprint("api", __name__)

MAX_IDS = 100_000  # ids in one cancel/retry request
INT_MAX = 2**31 - 1  # ids are 32-bit integer columns


def state():
    return current_app.extensions["pandaflow"]


class ApiError(Exception):
    """A request the API refuses; ``status`` is the HTTP status, ``extra`` goes into the body."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


# ---------------------------------------------------------------- auth and errors


@api.before_request
def _authenticate():
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else ""
    if not token or not hmac.compare_digest(token.encode(), state().token.encode()):
        return jsonify(error="authentication required: send 'Authorization: Bearer <token>'"), 401
    for key, value in (request.view_args or {}).items():
        if isinstance(value, int) and value > INT_MAX:  # no row can have it (and the database would overflow)
            return jsonify(error=f"no such {key.removesuffix('_id')}: {value}"), 404
    return None


def _wants_html() -> bool:
    # Only a browser asking for a page outside the API (the monitor) gets Flask's HTML errors.
    if request.path.startswith("/api/"):
        return False
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "text/html" and request.accept_mimetypes[best] > request.accept_mimetypes["application/json"]
    )


@api.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    if _wants_html():
        return exc
    if exc.code == 404:
        message = f"no such endpoint {request.path}; the API is described at GET /api/v1/openapi.json"
    elif exc.code == 405:
        allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or []))
        message = f"method {request.method} is not allowed on {request.path}" + (
            f"; use {allowed}" if allowed else ""
        )
    else:
        message = f"{exc.name.lower()}: {exc.description}"
    response = jsonify(error=message)
    response.status_code = exc.code or 500
    headers = dict(exc.get_headers())
    for key in ("Allow", "WWW-Authenticate", "Retry-After"):
        if key in headers:
            response.headers[key] = headers[key]
    return response


@api.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(error=exc.message, **exc.extra), exc.status


@api.errorhandler(queries.NotFound)
def _not_found(exc: queries.NotFound):
    return jsonify(error=str(exc)), 404


@api.errorhandler(submission.SubmissionError)
def _refused(exc: submission.SubmissionError):
    return jsonify(error=str(exc), problems=exc.problems), 400


@api.errorhandler(Exception)
def _internal_error(exc: Exception):
    if isinstance(exc, HTTPException):  # blueprint handlers are looked up before the app's
        return _http_error(exc)
    log.exception("unexpected error in %s %s", request.method, request.path)
    return jsonify(error=f"internal error: {type(exc).__name__}: {exc}; see the server log"), 500


# ---------------------------------------------------------------- request parsing


def _body(
    *, required: tuple[str, ...] = (), optional: tuple[str, ...] = (), allow_empty: bool = False
) -> dict:
    """The request's JSON object, with its keys checked."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if allow_empty and not required:
            return {}
        raise ApiError(400, f"send a JSON object body with {', '.join(map(repr, required))}")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text; send a JSON object") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"the request body is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    missing = [k for k in required if k not in body]
    if missing:
        raise ApiError(400, f"missing key(s) {missing} in the request body")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ApiError(
            400, f"unknown key(s) {unknown} in the request body; allowed: {sorted(required + optional)}"
        )
    return body


def _args(*allowed: str) -> dict[str, str]:
    """The query string; a parameter not in ``allowed`` is refused (a typo must not widen a filter)."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {unknown}; allowed: {sorted(allowed)}")
    return {k: request.args[k] for k in allowed if k in request.args}


def _int(args: dict[str, str], key: str, default: int | None = None, minimum: int = 0) -> int | None:
    if key not in args:
        return default
    try:
        value = int(args[key])
    except ValueError:
        raise ApiError(400, f"query parameter {key} must be an integer, got {args[key]!r}") from None
    if value < minimum:
        raise ApiError(400, f"query parameter {key} must be at least {minimum}, got {value}")
    if value > INT_MAX:
        raise ApiError(400, f"query parameter {key} must be at most {INT_MAX}, got {value}")
    return value


def _page_args(args: dict[str, str]) -> dict[str, int]:
    return {
        "limit": _int(args, "limit", queries.DEFAULT_LIMIT, minimum=1),
        "offset": _int(args, "offset", 0),
    }


def _read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a query on a fresh connection; a ``ValueError`` is a bad filter value (400)."""
    with state().engine.connect() as conn:
        try:
            return fn(conn, *args, **kwargs)
        except queries.NotFound:
            raise
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None


def _ids(body: dict) -> list[int]:
    ids = body["ids"]
    if not isinstance(ids, list) or not ids:
        raise ApiError(400, "'ids' must be a non-empty list of job ids (integers)")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 < i <= INT_MAX]
    if bad:
        raise ApiError(400, f"'ids' must hold job ids (integers from 1 to {INT_MAX}); not ids: {bad[:10]}")
    if len(ids) > MAX_IDS:
        raise ApiError(400, f"at most {MAX_IDS} ids per request; send several requests or use a workflow")
    return list(dict.fromkeys(ids))


def _extra(body: dict) -> int:
    extra = body.get("extra_attempts", 1)
    if isinstance(extra, bool) or not isinstance(extra, int) or not 1 <= extra <= 1000:
        raise ApiError(400, f"'extra_attempts' must be an integer from 1 to 1000, got {extra!r}")
    return extra


def _poke(message: dict[str, Any]) -> None:
    """Hand the dispatcher a hint after a commit; a failure must not undo the committed answer.

    Each hint is also recovered without it: the dispatcher rescans ready queues every sweep,
    heartbeat replies kill jobs that are no longer active, and executors sync their results.
    """
    try:
        state().poke(message)
    except Exception:
        log.exception("could not poke the dispatcher (%s); it catches up on its next sweep", message["kind"])


# ---------------------------------------------------------------- info and description


@api.get("/info")
def info():
    st = state()
    host = request.host.rsplit(":", 1)[0] if "]" not in request.host.rsplit(":", 1)[-1] else request.host
    zmq = st.dispatcher.endpoint if st.dispatcher else None
    if zmq and zmq.split("//", 1)[1].rsplit(":", 1)[0] in ("0.0.0.0", "*", "[::]"):
        zmq = f"tcp://{host}:{zmq.rsplit(':', 1)[1]}"
    return jsonify(version="0.1.0", zmq=zmq, epoch=st.dispatcher.epoch if st.dispatcher else None)


@api.get("/openapi.json")
def openapi():
    _args()
    return jsonify(openapi_document())


@api.get("/errorcodes")
def errorcodes():
    _args()
    return jsonify(error_codes=queries.error_codes())


# ---------------------------------------------------------------- workflows


def _decode_buffers(jobs: list) -> list:
    """Python jobs travel as base64 over JSON: turn ``buffer_b64`` into ``buffer`` bytes."""
    problems = []
    decoded = []
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            decoded.append(job)  # submission.validate names the problem
            continue
        job = dict(job)
        if "buffer" in job:
            problems.append(
                f"jobs[{i}]: over JSON send the payload base64-encoded as 'buffer_b64', not 'buffer'"
            )
        if "buffer_b64" in job:
            text = job.pop("buffer_b64")
            try:
                if not isinstance(text, str):
                    raise ValueError
                job["buffer"] = base64.b64decode(text, validate=True)
            except (ValueError, binascii.Error):
                problems.append(f"jobs[{i}]: 'buffer_b64' is not valid base64 text")
        decoded.append(job)
    if problems:
        raise submission.SubmissionError(problems)
    return decoded


def _site_broker(policy: sites.SitePolicy | None, jobs: list, label: Any) -> Any:
    """The broker of one request: the server's, or one that spreads jobs over the policy's sites
    (seeded by the request itself, so the same request is brokered the same way)."""
    if policy is None:
        return state().broker
    first = jobs[0] if isinstance(jobs[0], dict) else {}
    phase = sites.seed(label, len(jobs), first.get("uid") or first.get("name"))
    return sites.SiteBroker(state().broker, policy, jobs, phase)


@api.post("/workflows")
@collector.paused()
def submit_workflow():
    body = _body(required=("name", "jobs"), optional=("owner", "available", "sites", "site"))
    name, owner, jobs = body["name"], body.get("owner", ""), body["jobs"]
    available = body.get("available", [])
    if not isinstance(available, list) or not all(isinstance(a, str) and a for a in available):
        raise ApiError(400, "'available' must be a list of data product names that exist already")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "'name' must be a non-empty string naming the workflow")
    if not isinstance(owner, str):
        raise ApiError(400, "'owner' must be a string")
    if not isinstance(jobs, list) or not jobs:
        raise ApiError(400, "'jobs' must be a non-empty list of job objects")
    st = state()
    try:
        policy = sites.parse(body.get("sites"), body.get("site"), st.broker.sites)
    except sites.SiteError as exc:
        raise ApiError(400, str(exc)) from None
    broker = _site_broker(policy, jobs, name)
    clean = submission.validate(_decode_buffers(jobs), broker)
    with st.engine.begin() as conn:
        stored = submission.store(
            conn, clean, submission.WorkflowBook(), workflow=name, owner=owner, available=available
        )
        if policy is not None:
            sites.remember(conn, stored.workflow_id, policy)
    if stored.queues:
        _poke({"kind": "ready", "queues": sorted(stored.queues)})
    response = jsonify(
        workflow_id=stored.workflow_id,
        job_ids=stored.ids,
        duplicates=stored.duplicates,
        **_site_counts(broker, clean, stored),
    )
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_workflow", workflow_id=stored.workflow_id)
    return response


@api.post("/workflows/<int:workflow_id>/jobs")
@collector.paused()
def append_jobs(workflow_id: int):
    """Add jobs to a workflow: a large DAG goes in pieces, each all-or-nothing; a piece may read
    products that earlier pieces write."""
    body = _body(required=("jobs",), optional=("available",))
    jobs, available = body["jobs"], body.get("available", [])
    if not isinstance(available, list) or not all(isinstance(a, str) and a for a in available):
        raise ApiError(400, "'available' must be a list of data product names that exist already")
    if not isinstance(jobs, list) or not jobs:
        raise ApiError(400, "'jobs' must be a non-empty list of job objects")
    st = state()
    with st.engine.connect() as conn:
        if conn.execute(select(s.workflows.c.id).where(s.workflows.c.id == workflow_id)).first() is None:
            raise ApiError(404, f"no workflow {workflow_id}; create it with POST /api/v1/workflows")
        policy = sites.policy_of(conn, workflow_id)  # appended jobs follow the workflow's sites
    broker = _site_broker(policy, jobs, workflow_id)
    clean = submission.validate(_decode_buffers(jobs), broker)
    with st.engine.begin() as conn:
        stored = submission.store(
            conn, clean, submission.WorkflowBook(), workflow_id=workflow_id, available=available
        )
    if stored.queues:
        _poke({"kind": "ready", "queues": sorted(stored.queues)})
    response = jsonify(
        workflow_id=workflow_id,
        job_ids=stored.ids,
        duplicates=stored.duplicates,
        **_site_counts(broker, clean, stored),
    )
    response.status_code = 201
    return response


def _site_counts(broker: Any, clean: list[dict], stored: submission.Submitted) -> dict[str, Any]:
    """``{"sites": {site: jobs stored by this request}}`` for a workflow with sites, else nothing."""
    if not isinstance(broker, sites.SiteBroker):
        return {}
    new = set(stored.accepted)
    return {"sites": broker.counts(job for job in clean if job["uid"] in new)}


@api.get("/workflows")
def list_workflows():
    args = _args("limit", "offset")
    return jsonify(_read(queries.list_workflows, **_page_args(args)))


@api.get("/workflows/<int:workflow_id>")
def get_workflow(workflow_id: int):
    _args()
    return jsonify(_read(queries.get_workflow, workflow_id))


@api.get("/workflows/<int:workflow_id>/tasks")
def workflow_tasks(workflow_id: int):
    args = _args("limit", "offset")
    with state().engine.connect() as conn:
        queries.require_workflow(conn, workflow_id)
    return jsonify(_read(queries.list_tasks, workflow_id=workflow_id, **_page_args(args)))


@api.get("/workflows/<int:workflow_id>/report")
def workflow_report(workflow_id: int):
    _args()
    return jsonify(_read(queries.report, workflow_id))


_ACTIONS = {
    "cancel": control.cancel,
    "retry": control.retry,
    "hold": control.hold,
    "release": control.release,
}


def _control(
    action: str, *, job_ids: list[int] | None = None, workflow_id: int | None = None, extra: int = 1,
    task: str | None = None,
):  # fmt: skip
    """Cancel, retry, hold or release in one transaction, then tell the dispatcher what changed."""
    st = state()
    now = time.time()
    options: dict[str, Any] = {"job_ids": job_ids, "workflow_id": workflow_id, "task": task}
    if action == "retry":
        options["extra"] = extra
    try:
        with st.engine.begin() as conn:
            if workflow_id is not None:
                queries.require_workflow(conn, workflow_id)
            changed = _ACTIONS[action](conn, now, **options)
            names = {}
            if changed.kill:
                names = dict(
                    conn.execute(
                        select(s.pilots.c.id, s.pilots.c.name).where(s.pilots.c.id.in_(list(changed.kill)))
                    ).all()
                )
    except control.ControlError as exc:
        # Named ids: some do not exist (404). A workflow known to exist: it has no jobs (400).
        raise ApiError(404 if job_ids else 400, f"{exc}; nothing was changed") from None
    # Poke only after the commit: the dispatcher must never act on a rolled-back change.
    kill = {names[p]: ids for p, ids in changed.kill.items() if p in names}
    if kill:
        _poke({"kind": "kill", "pilots": kill})
    if changed.notify:
        _poke({"kind": "notify", "notify": dict(changed.notify)})
    if changed.queues:
        _poke({"kind": "ready", "queues": sorted(q for q in changed.queues if q)})
    return jsonify(action=action, changed=changed.job_ids, skipped=changed.skipped)


def _task(body: dict) -> str | None:
    task = body.get("task")
    if task is not None and (not isinstance(task, str) or not task):
        raise ApiError(400, "'task' must be the name of one of the workflow's tasks (labels)")
    return task


@api.post("/workflows/<int:workflow_id>/cancel")
def cancel_workflow(workflow_id: int):
    _args()
    body = _body(optional=("task",), allow_empty=True)
    return _control("cancel", workflow_id=workflow_id, task=_task(body))


@api.post("/workflows/<int:workflow_id>/retry")
def retry_workflow(workflow_id: int):
    _args()
    body = _body(optional=("extra_attempts", "task"), allow_empty=True)
    return _control("retry", workflow_id=workflow_id, extra=_extra(body), task=_task(body))


@api.post("/workflows/<int:workflow_id>/hold")
def hold_workflow(workflow_id: int):
    _args()
    body = _body(optional=("task",), allow_empty=True)
    return _control("hold", workflow_id=workflow_id, task=_task(body))


@api.post("/workflows/<int:workflow_id>/release")
def release_workflow(workflow_id: int):
    _args()
    body = _body(optional=("task",), allow_empty=True)
    return _control("release", workflow_id=workflow_id, task=_task(body))


# ---------------------------------------------------------------- tasks and jobs


@api.get("/tasks")
def list_tasks():
    args = _args("workflow_id", "limit", "offset")
    return jsonify(_read(queries.list_tasks, workflow_id=_int(args, "workflow_id"), **_page_args(args)))


@api.get("/jobs")
def list_jobs():
    args = _args("workflow_id", "task_id", "status", "queue", "pilot_id", "name", "limit", "offset")
    status = None
    if "status" in args:
        status = [x.strip() for x in args["status"].split(",") if x.strip()]
        if not status:
            raise ApiError(
                400, "query parameter status is empty; give one or more states separated by commas"
            )
    return jsonify(
        _read(
            queries.list_jobs,
            workflow_id=_int(args, "workflow_id"),
            task_id=_int(args, "task_id"),
            status=status,
            queue=args.get("queue"),
            pilot_id=_int(args, "pilot_id"),
            name=args.get("name"),
            **_page_args(args),
        )
    )


@api.get("/jobs/<int:job_id>")
def get_job(job_id: int):
    _args()
    return jsonify(_read(queries.get_job, job_id))


@api.get("/jobs/<int:job_id>/log")
def get_log(job_id: int):
    args = _args("attempt")
    found = _read(queries.get_log, job_id, _int(args, "attempt", minimum=1))
    if request.accept_mimetypes.best_match(["text/plain", "application/json"]) == "application/json":
        return jsonify(found)
    response = Response(found["text"], mimetype="text/plain")
    response.headers["X-Pandaflow-Attempt"] = str(found["attempt"])
    response.headers["X-Pandaflow-Log-Source"] = found["source"]
    return response


@api.get("/jobs/<int:job_id>/events")
def get_job_events(job_id: int):
    _args()
    return jsonify(_read(queries.job_events, job_id))


@api.post("/jobs/hold")
def hold_jobs():
    _args()
    body = _body(required=("ids",))
    return _control("hold", job_ids=_ids(body))


@api.post("/jobs/release")
def release_jobs():
    _args()
    body = _body(required=("ids",))
    return _control("release", job_ids=_ids(body))


@api.post("/jobs/cancel")
def cancel_jobs():
    _args()
    body = _body(required=("ids",))
    return _control("cancel", job_ids=_ids(body))


@api.post("/jobs/retry")
def retry_jobs():
    _args()
    body = _body(required=("ids",), optional=("extra_attempts",))
    return _control("retry", job_ids=_ids(body), extra=_extra(body))


# ---------------------------------------------------------------- pilots, queues, summaries


@api.get("/pilots")
def list_pilots():
    args = _args("status", "queue", "limit", "offset")
    return jsonify(
        _read(queries.list_pilots, status=args.get("status"), queue=args.get("queue"), **_page_args(args))
    )


@api.get("/queues")
def list_queues():
    _args()
    return jsonify(_read(queries.list_queues))


@api.get("/workers")
def list_workers():
    args = _args("queue", "state", "limit", "offset")
    state_filter = None
    if "state" in args:
        state_filter = [x.strip() for x in args["state"].split(",") if x.strip()]
        if not state_filter:
            raise ApiError(
                400, "query parameter state is empty; give one or more worker states separated by commas"
            )
    return jsonify(
        _read(queries.list_workers, queue=args.get("queue"), state=state_filter, **_page_args(args))
    )


@api.get("/summary")
def summary():
    _args()
    return jsonify(_read(queries.summary))


@api.get("/errors")
def errors():
    args = _args("workflow_id")
    return jsonify(_read(queries.error_summary, workflow_id=_int(args, "workflow_id")))
