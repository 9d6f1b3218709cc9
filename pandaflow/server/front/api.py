"""REST API ``/api/v1``: bulk submission, read queries, cancel/retry/hold/release, job
timelines, and its OpenAPI document.

Every route needs ``Authorization: Bearer <token>``. Every answer is JSON (job logs are
``text/plain`` unless JSON is asked for), errors included: a user error is a 4xx
``{"error": "..."}`` saying what was wrong and what to do; a bug is a 500
``{"error": "internal error: ..."}`` that is logged with its stack trace. Read routes return
the dicts of :mod:`pandaflow.server.front.queries` unchanged, so the CLI's ``--db`` mode prints the
same JSON as the server.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from flask import Blueprint, Response, current_app, jsonify, request, url_for
from msgspec import Struct
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from pandaflow import problems, spec
from pandaflow.server.front import apischema, collector, queries
from pandaflow.server.front.openapi import document as openapi_document
from pandaflow.server.jobs import control, loops, sites, submission
from pandaflow.server.store import schema as s

log = logging.getLogger(__name__)

api = Blueprint("api", __name__)

INT_MAX = spec.INT_MAX  # ids are 32-bit integer columns


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
# Bodies and query strings are typed by pandaflow.spec (jobs) and pandaflow.server.front.apischema (the
# rest); the OpenAPI document is generated from the same structs.


def _body[B: Struct](kind: type[B], *, optional: bool = False) -> B:
    """The request's JSON body decoded into ``kind``; ``optional``: an empty body is ``kind()``."""
    raw = request.get_data(cache=True)
    if not raw or raw.isspace():
        if optional:
            return kind()
        needed = [f"'{f.name}'" for f in msgspec.structs.fields(kind) if f.required]
        raise ApiError(400, f"send a JSON object body with {', '.join(needed)}")
    try:
        return spec.decode(raw, kind)
    except spec.BodyError as exc:
        raise ApiError(400, str(exc)) from None


def _submission[R: (spec.SubmitRequest, spec.AppendRequest)](kind: type[R]) -> R:
    """A submission body: bad jobs come back as :class:`~pandaflow.spec.Invalid` for
    :func:`~pandaflow.server.jobs.submission.validate` to list with the other refused jobs."""
    raw = request.get_data(cache=True)
    if not raw or raw.isspace():
        _body(kind)  # says what to send
    try:
        return spec.decode_submission(raw, kind)
    except spec.BodyError as exc:
        raise ApiError(400, str(exc)) from None


def _query(kind: type[Struct] = apischema.Empty) -> dict[str, Any]:
    """The query string as ``kind`` types it (strings coerced): the parameters given, by name.
    A parameter ``kind`` does not have is refused: a typo must not widen a filter."""
    args = request.args
    allowed = kind.__struct_fields__
    unknown = sorted(k for k in args if k not in allowed)
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {unknown}; allowed: {sorted(allowed)}")
    repeated = sorted(k for k in args if len(args.getlist(k)) > 1)
    if repeated:
        raise ApiError(400, f"query parameter(s) {repeated} given more than once; give each once")
    given = {k: args[k] for k in args}
    nul = sorted(k for k, v in given.items() if "\x00" in v or "\x00" in k)
    if nul:
        raise ApiError(400, f"query parameter(s) {nul}: {spec.NUL_REFUSED}")
    try:
        return problems.present(msgspec.convert(given, kind, strict=False))
    except msgspec.ValidationError as exc:
        raise ApiError(
            400, problems.explain(exc, given, kind, root="the query string", prefix="query parameter ")
        ) from None


def _read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a query on a fresh connection; a ``ValueError`` is a bad filter value (400)."""
    with state().engine.connect() as conn:
        try:
            return fn(conn, *args, **kwargs)
        except queries.NotFound:
            raise
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None


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
    _query()
    st = state()
    host = request.host.rsplit(":", 1)[0] if "]" not in request.host.rsplit(":", 1)[-1] else request.host
    zmq = st.dispatcher.endpoint if st.dispatcher else None
    if zmq and zmq.split("//", 1)[1].rsplit(":", 1)[0] in ("0.0.0.0", "*", "[::]"):
        zmq = f"tcp://{host}:{zmq.rsplit(':', 1)[1]}"
    return jsonify(version="0.1.0", zmq=zmq, epoch=st.dispatcher.epoch if st.dispatcher else None)


@api.get("/openapi.json")
def openapi():
    _query()
    return jsonify(openapi_document())


@api.get("/errorcodes")
def errorcodes():
    _query()
    return jsonify(error_codes=queries.error_codes())


# ---------------------------------------------------------------- workflows


def _site_broker(policy: sites.SitePolicy | None, jobs: list[spec.Job | spec.Invalid], label: Any) -> Any:
    """The broker of one request: the server's, or one that spreads jobs over the policy's sites
    (seeded by the request itself, so the same request is brokered the same way)."""
    if policy is None:
        return state().broker
    first = jobs[0] if isinstance(jobs[0], spec.Job) else spec.Job()
    phase = sites.seed(label, len(jobs), first.uid or first.name)
    shapes = [
        {"memory_mb": j.memory_mb, "cores": j.cores, "walltime_s": j.walltime_s, "queue": j.queue}
        for j in jobs
        if isinstance(j, spec.Job)
    ]
    return sites.SiteBroker(state().broker, policy, shapes, phase)


@api.post("/workflows")
@collector.paused()
def submit_workflow():
    body = _submission(spec.SubmitRequest)
    name, owner, available = body.name, body.owner, body.available
    st = state()
    try:
        policy = sites.parse(_given(body.sites), _given(body.site), st.broker.sites)
    except sites.SiteError as exc:
        raise ApiError(400, str(exc)) from None
    broker = _site_broker(policy, body.jobs, name)
    clean = submission.validate(body.jobs, broker)
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
    body = _submission(spec.AppendRequest)
    jobs, available = body.jobs, body.available
    st = state()
    with st.engine.connect() as conn:
        if conn.execute(select(s.workflows.c.id).where(s.workflows.c.id == workflow_id)).first() is None:
            raise ApiError(404, f"no workflow {workflow_id}; create it with POST /api/v1/workflows")
        policy = sites.policy_of(conn, workflow_id)  # appended jobs follow the workflow's sites
    broker = _site_broker(policy, jobs, workflow_id)
    clean = submission.validate(jobs, broker)
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


def _given(value: Any) -> Any:
    return None if value is msgspec.UNSET else value


def _site_counts(broker: Any, clean: list[dict], stored: submission.Submitted) -> dict[str, Any]:
    """``{"sites": {site: jobs stored by this request}}`` for a workflow with sites, else nothing."""
    if not isinstance(broker, sites.SiteBroker):
        return {}
    new = set(stored.accepted)
    return {"sites": broker.counts(job for job in clean if job["uid"] in new)}


@api.get("/workflows")
def list_workflows():
    return jsonify(_read(queries.list_workflows, **_query(apischema.PageQuery)))


@api.get("/workflows/<int:workflow_id>")
def get_workflow(workflow_id: int):
    _query()
    return jsonify(_read(queries.get_workflow, workflow_id))


@api.get("/workflows/<int:workflow_id>/tasks")
def workflow_tasks(workflow_id: int):
    args = _query(apischema.PageQuery)
    with state().engine.connect() as conn:
        queries.require_workflow(conn, workflow_id)
    return jsonify(_read(queries.list_tasks, workflow_id=workflow_id, **args))


@api.get("/workflows/<int:workflow_id>/report")
def workflow_report(workflow_id: int):
    _query()
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
        # Named jobs or a task that do not exist: 404. A workflow known to exist with no jobs: 400.
        raise ApiError(
            404 if isinstance(exc, control.NotThere) else 400, f"{exc}; nothing was changed"
        ) from None
    # Poke only after the commit: the dispatcher must never act on a rolled-back change.
    kill = {names[p]: ids for p, ids in changed.kill.items() if p in names}
    if kill:
        _poke({"kind": "kill", "pilots": kill})
    if changed.notify:
        _poke({"kind": "notify", "notify": dict(changed.notify)})
    if changed.queues:
        _poke({"kind": "ready", "queues": sorted(q for q in changed.queues if q)})
    return jsonify(action=action, changed=changed.job_ids, skipped=changed.skipped)


def _task(body: apischema.TaskOption | apischema.RetryOptions) -> str | None:
    return None if body.task is msgspec.UNSET else body.task


@api.post("/workflows/<int:workflow_id>/cancel")
def cancel_workflow(workflow_id: int):
    _query()
    body = _body(apischema.TaskOption, optional=True)
    return _control("cancel", workflow_id=workflow_id, task=_task(body))


@api.post("/workflows/<int:workflow_id>/retry")
def retry_workflow(workflow_id: int):
    _query()
    body = _body(apischema.RetryOptions, optional=True)
    return _control("retry", workflow_id=workflow_id, extra=body.extra_attempts, task=_task(body))


@api.post("/workflows/<int:workflow_id>/hold")
def hold_workflow(workflow_id: int):
    _query()
    body = _body(apischema.TaskOption, optional=True)
    return _control("hold", workflow_id=workflow_id, task=_task(body))


@api.post("/workflows/<int:workflow_id>/release")
def release_workflow(workflow_id: int):
    _query()
    body = _body(apischema.TaskOption, optional=True)
    return _control("release", workflow_id=workflow_id, task=_task(body))


# ---------------------------------------------------------------- tasks and jobs


@api.get("/tasks")
def list_tasks():
    return jsonify(_read(queries.list_tasks, **_query(apischema.TasksQuery)))


@api.get("/jobs")
def list_jobs():
    args = _query(apischema.JobsQuery)
    if "status" in args:
        args["status"] = args["status"].split(",")
    return jsonify(_read(queries.list_jobs, **args))


@api.get("/jobs/<int:job_id>")
def get_job(job_id: int):
    _query()
    return jsonify(_read(queries.get_job, job_id))


@api.get("/jobs/<int:job_id>/log")
def get_log(job_id: int):
    found = _read(queries.get_log, job_id, _query(apischema.LogQuery).get("attempt"))
    if request.accept_mimetypes.best_match(["text/plain", "application/json"]) == "application/json":
        return jsonify(found)
    response = Response(found["text"], mimetype="text/plain")
    response.headers["X-Pandaflow-Attempt"] = str(found["attempt"])
    response.headers["X-Pandaflow-Log-Source"] = found["source"]
    return response


@api.get("/jobs/<int:job_id>/events")
def get_job_events(job_id: int):
    _query()
    return jsonify(_read(queries.job_events, job_id))


@api.post("/jobs/hold")
def hold_jobs():
    _query()
    body = _body(apischema.HoldJobs)
    return _control("hold", job_ids=list(dict.fromkeys(body.ids)))


@api.post("/jobs/release")
def release_jobs():
    _query()
    body = _body(apischema.ReleaseJobs)
    return _control("release", job_ids=list(dict.fromkeys(body.ids)))


@api.post("/jobs/cancel")
def cancel_jobs():
    _query()
    body = _body(apischema.CancelJobs)
    return _control("cancel", job_ids=list(dict.fromkeys(body.ids)))


@api.post("/jobs/retry")
def retry_jobs():
    _query()
    body = _body(apischema.RetryJobs)
    return _control("retry", job_ids=list(dict.fromkeys(body.ids)), extra=body.extra_attempts)


# ---------------------------------------------------------------- pilots, queues, summaries


@api.get("/pilots")
def list_pilots():
    return jsonify(_read(queries.list_pilots, **_query(apischema.PilotsQuery)))


@api.get("/queues")
def list_queues():
    _query()
    return jsonify(_read(queries.list_queues))


@api.get("/workers")
def list_workers():
    args = _query(apischema.WorkersQuery)
    if "state" in args:
        args["state"] = args["state"].split(",")
    return jsonify(_read(queries.list_workers, **args))


@api.get("/summary")
def summary():
    _query()
    return jsonify(_read(queries.summary))


@api.get("/errors")
def errors():
    return jsonify(_read(queries.error_summary, **_query(apischema.ErrorsQuery)))


# ---------------------------------------------------------------- loops


def _loop_write(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a write of :mod:`pandaflow.server.jobs.loops` in one transaction (all or nothing)."""
    try:
        with state().engine.begin() as conn:
            return fn(conn, time.time(), *args, **kwargs)
    except loops.LoopConflict as exc:
        raise ApiError(409, f"{exc}; nothing was changed") from None
    except loops.LoopMissing as exc:
        raise ApiError(404, str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, f"{exc}; nothing was changed") from None


@api.get("/loops")
def list_loops():
    return jsonify(_read(queries.list_loops, **_query(apischema.LoopsQuery)))


@api.post("/loops")
def open_loop():
    _query()
    body = _body(apischema.OpenLoop)
    _, created = _loop_write(
        loops.open_loop, name=body.name, kind=body.kind, config=body.config, budget=body.budget,
        direction=body.direction, workflow=body.workflow, owner=body.owner,
    )  # fmt: skip
    response = jsonify(_read(queries.get_loop, body.name))
    response.status_code = 201 if created else 200
    response.headers["Location"] = url_for("api.get_loop", name=body.name)
    return response


@api.get("/loops/<name>")
def get_loop(name: str):
    _query()
    return jsonify(_read(queries.get_loop, name))


@api.get("/loops/<name>/trials")
def list_trials(name: str):
    return jsonify(_read(queries.list_trials, name, **_query(apischema.TrialsQuery)))


@api.post("/loops/<name>/trials")
def record_trials(name: str):
    _query()
    body = _body(apischema.RecordTrials)
    numbers = [t.number for t in body.trials]
    if len(set(numbers)) != len(numbers):
        raise ApiError(400, "a trial number appears twice in 'trials': send each once; nothing was changed")
    trials = [problems.present(t) for t in body.trials]
    return jsonify(numbers=_loop_write(loops.record_trials, name, trials))


@api.post("/loops/<name>/end")
def end_loop(name: str):
    _query()
    body = _body(apischema.EndLoop)
    _loop_write(loops.end_loop, name, body.status, body.message, _given(body.summary))
    return jsonify(_read(queries.get_loop, name))
