"""The OpenAPI 3.1 description of the REST API ``/api/v1`` (served at ``GET /api/v1/openapi.json``).

Generated, not written: every schema comes from the structs that validate the requests
(:mod:`pandaflow.spec`, :mod:`pandaflow.server.front.apischema`) or describe the answers
(:mod:`pandaflow.server.front.answers`); this module holds only the table of routes. A test checks
that every route of the blueprint is in the table, and a schemathesis run checks that the server
does what the document says.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any, NamedTuple

import msgspec
from msgspec import Struct

from pandaflow import spec
from pandaflow.server.front import answers as r
from pandaflow.server.front import apischema as a

JSON = "application/json"
REF = "#/components/schemas/{name}"


class Route(NamedTuple):
    """One operation: ``ok`` is the struct of its success answer (or the answer object itself)."""

    path: str
    method: str
    operation: str
    tag: str
    summary: str
    ok: type[Struct] | dict[str, Any]
    status: str = "200"
    query: type[Struct] = a.Empty
    body: type[Struct] | None = None
    body_required: bool = True
    not_found: bool = False
    description: str = ""
    conflict: bool = False  # may answer 409 (the request contradicts what is recorded)
    also: tuple[str, ...] = ()  # other success statuses with the same answer


_SUBMIT = (
    "Every job is validated and brokered first; one refused job refuses the whole request (400 with "
    "'problems' listing each). Shell jobs give 'command'; python jobs give 'buffer' (base64). Jobs with "
    "'inputs'/'outputs'/'parents' form a graph that is checked as a whole (cycles, duplicate names, "
    "unknown parents, two writers of a product, inputs without a producer are refused); such jobs are "
    "stored pending until their inputs are available. What the schema cannot say is refused with a 400 "
    "too: a job no queue can hold, a 'queue' or site the server does not have, memory_max_mb below "
    "memory_mb, a uid twice in one request."
)
_BPS_STATES = (
    "Pandaflow job states map to BPS WmsStates: pending UNREADY, ready READY, reserved (push queues) "
    "PENDING, dispatched PENDING, running RUNNING, cancelled DELETED, held HELD, finished SUCCEEDED, "
    "failed FAILED, pruned PRUNED."
)

_LOG_ANSWER = {
    "description": "the log text; with 'Accept: application/json', a Log object",
    "headers": {
        "X-Pandaflow-Attempt": {"schema": {"type": "integer"}},
        "X-Pandaflow-Log-Source": {"schema": {"type": "string", "enum": ["log", "tail", "none"]}},
    },
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        JSON: {"schema": {"$ref": REF.format(name="Log")}},
    },
}
_DOCUMENT_ANSWER = {"description": "OpenAPI 3.1 document", "content": {JSON: {"schema": {"type": "object"}}}}

ROUTES = (
    Route("/info", "get", "getInfo", "server", "Server version and the ZeroMQ endpoint pilots connect to",
          r.Info),
    Route("/openapi.json", "get", "getOpenApi", "server", "This document", _DOCUMENT_ANSWER),
    Route("/workflows", "post", "submitWorkflow", "workflows",
          "Submit a workflow: all jobs are stored, or none", r.Submitted, "201", body=spec.SubmitRequest,
          description=_SUBMIT),
    Route("/workflows", "get", "listWorkflows", "workflows", "List workflows, newest first", r.WorkflowPage,
          query=a.PageQuery),
    Route("/workflows/{workflow_id}", "get", "getWorkflow", "workflows", "One workflow with its tasks",
          r.WorkflowDetail),
    Route("/workflows/{workflow_id}/tasks", "get", "listWorkflowTasks", "workflows",
          "The tasks of a workflow", r.TaskPage, query=a.PageQuery),
    Route("/workflows/{workflow_id}/report", "get", "getWorkflowReport", "workflows",
          "A workflow's jobs by task (label) and BPS state, as `bps report` shows them", r.Report,
          description=_BPS_STATES),
    Route("/workflows/{workflow_id}/jobs", "post", "appendJobs", "workflows",
          "Add jobs to a workflow (a large DAG in pieces, each all or nothing)", r.Submitted, "201",
          body=spec.AppendRequest, description="Validated like a submission; a piece may read products that "
          "earlier pieces write. Parents name jobs of the same piece."),
    Route("/workflows/{workflow_id}/cancel", "post", "cancelWorkflow", "workflows",
          "Cancel every job of a workflow (or of one task) that has not ended", r.ControlResult,
          body=a.TaskOption, body_required=False),
    Route("/workflows/{workflow_id}/retry", "post", "retryWorkflow", "workflows",
          "Retry every failed or cancelled job of a workflow (or of one task)", r.ControlResult,
          body=a.RetryOptions, body_required=False),
    Route("/workflows/{workflow_id}/hold", "post", "holdWorkflow", "workflows",
          "Hold the waiting jobs of a workflow (or of one task): neither dispatched nor pruned",
          r.ControlResult, body=a.TaskOption, body_required=False),
    Route("/workflows/{workflow_id}/release", "post", "releaseWorkflow", "workflows",
          "Release the held jobs of a workflow (or of one task) to where they were", r.ControlResult,
          body=a.TaskOption, body_required=False),
    Route("/tasks", "get", "listTasks", "tasks", "List tasks ordered by id", r.TaskPage, query=a.TasksQuery),
    Route("/jobs", "get", "listJobs", "jobs", "List jobs ordered by id, filtered", r.JobPage,
          query=a.JobsQuery),
    Route("/jobs/{job_id}", "get", "getJob", "jobs", "One job with its attempt history", r.JobDetail),
    Route("/jobs/{job_id}/log", "get", "getJobLog", "jobs",
          "The log of a job's latest attempt (or of one attempt)", _LOG_ANSWER, query=a.LogQuery),
    Route("/jobs/{job_id}/events", "get", "getJobEvents", "jobs",
          "A job's timeline: its submission and every change of its state", r.JobEvents),
    Route("/jobs/hold", "post", "holdJobs", "jobs", "Hold waiting jobs by id", r.ControlResult,
          body=a.HoldJobs, not_found=True),
    Route("/jobs/release", "post", "releaseJobs", "jobs", "Release held jobs by id", r.ControlResult,
          body=a.ReleaseJobs, not_found=True),
    Route("/jobs/cancel", "post", "cancelJobs", "jobs", "Cancel jobs by id", r.ControlResult,
          body=a.CancelJobs, not_found=True),
    Route("/jobs/retry", "post", "retryJobs", "jobs", "Retry failed or cancelled jobs by id", r.ControlResult,
          body=a.RetryJobs, not_found=True),
    Route("/pilots", "get", "listPilots", "pilots", "List pilots, newest first", r.PilotPage,
          query=a.PilotsQuery),
    Route("/queues", "get", "listQueues", "queues",
          "Queues with live job and pilot counts and each harvester's last cycle", r.QueueList),
    Route("/workers", "get", "listWorkers", "harvester",
          "List the pilot workers harvesters submitted, newest first, with the queues' harvester status",
          r.WorkerPage, query=a.WorkersQuery),
    Route("/summary", "get", "getSummary", "server", "Jobs by state, pilots by state and queues", r.Summary),
    Route("/errors", "get", "getErrorSummary", "jobs", "Errors grouped by task and error code",
          r.ErrorSummary, query=a.ErrorsQuery),
    Route("/errorcodes", "get", "listErrorCodes", "server", "Every error code with its meaning",
          r.ErrorCodes),
    Route("/loops", "get", "listLoops", "loops", "List loops (searches driven from scripts), newest first",
          r.LoopPage, query=a.LoopsQuery),
    Route("/loops", "post", "openLoop", "loops", "Create a loop, or resume the one of that name",
          r.Loop, "201", body=a.OpenLoop, conflict=True, also=("200",),
          description="201 when created; 200 when a loop of that name with the same settings exists (it "
          "is resumed: running again). A loop of that name with other settings is a 409."),
    Route("/loops/{name}", "get", "getLoop", "loops", "One loop: progress, counts and best trial", r.Loop),
    Route("/loops/{name}/trials", "get", "listTrials", "loops", "A loop's trials", r.TrialPage,
          query=a.TrialsQuery),
    Route("/loops/{name}/trials", "post", "recordTrials", "loops",
          "Record trials asked (with their params) or told (state, value): all or none", r.TrialsRecorded,
          body=a.RecordTrials, conflict=True,
          description="A trial number recorded earlier with other params is a 409."),
    Route("/loops/{name}/end", "post", "endLoop", "loops", "Record how a loop ended", r.Loop,
          body=a.EndLoop),
)  # fmt: skip

_ERRORS = {
    "BadRequest": "the request was refused; the message says why and what to do",
    "Unauthorized": "missing or wrong bearer token",
    "NotFound": "no such object",
    "Conflict": "the request contradicts what is recorded; nothing was changed",
    "InternalError": "a bug of the server (logged there)",
}


def _hoist(schema: Any) -> None:
    """Move a description from the one described branch of ``X | None`` up to the property."""
    if isinstance(schema, dict):
        branches = schema.get("anyOf")
        if branches and "description" not in schema:
            described = [b for b in branches if "description" in b]
            if len(described) == 1:
                schema["description"] = described[0].pop("description")
        for value in schema.values():
            _hoist(value)
    elif isinstance(schema, list):
        for value in schema:
            _hoist(value)


_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # loop names (apischema.LoopName)


def _parameters(route: Route) -> list[dict[str, Any]]:
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": (
                {"type": "integer", "minimum": 0, "maximum": spec.INT_MAX}
                if name.endswith("_id")
                else {"type": "string", "pattern": _NAME_PATTERN}
            ),
            "description": name.replace("_", " "),
        }
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    _, found = msgspec.json.schema_components([route.query], ref_template=REF)
    query = found[route.query.__name__]
    for name, prop in query.get("properties", {}).items():
        prop = dict(prop)
        about = prop.pop("description", "")
        params.append({"name": name, "in": "query", "required": name in query.get("required", ()),
                       "schema": prop, "description": about})  # fmt: skip
    return params


def _operation(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": route.summary, "operationId": route.operation, "tags": [route.tag]}
    if route.description:
        out["description"] = route.description
    params = _parameters(route)
    if params:
        out["parameters"] = params
    if route.body is not None:
        schema = {"$ref": REF.format(name=route.body.__name__)}
        out["requestBody"] = {"required": route.body_required, "content": {JSON: {"schema": schema}}}
    answer = route.ok
    if not isinstance(answer, dict):
        answer = {
            "description": "OK",
            "content": {JSON: {"schema": {"$ref": REF.format(name=answer.__name__)}}},
        }
    errors = {"400": "BadRequest", "401": "Unauthorized", "500": "InternalError"}
    if route.not_found or "{" in route.path:
        errors["404"] = "NotFound"
    if route.conflict:
        errors["409"] = "Conflict"
    out["responses"] = {
        route.status: answer,
        **dict.fromkeys(route.also, answer),
        **{code: {"$ref": f"#/components/responses/{errors[code]}"} for code in sorted(errors)},
    }
    return out


@functools.cache
def _document() -> dict[str, Any]:
    structs = {r.Error, r.Log}
    for route in ROUTES:
        structs.update(s for s in (route.ok, route.body) if isinstance(s, type))
    _, schemas = msgspec.json.schema_components(sorted(structs, key=lambda s: s.__name__), ref_template=REF)
    for name, rules in spec.SCHEMA_RULES.items():
        schemas[name].update(rules)
    _hoist(schemas)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    error = {"$ref": REF.format(name="Error")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pandaflow job server",
            "version": "0.1.0",
            "description": "REST API of the pandaflow job server: submit workflows of jobs, follow them, "
            "cancel, retry, hold and release them. Times are ISO-8601 UTC strings; durations are seconds. "
            "Every error is a JSON object with an 'error' message. Text (bodies and query parameters) may "
            "not contain NUL characters (\\u0000), which the database cannot store.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": t} for t in dict.fromkeys(route.tag for route in ROUTES)],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the server's token (PANDAFLOW_TOKEN or $PANDAFLOW_HOME/token)",
                }
            },
            "schemas": dict(sorted(schemas.items())),
            "responses": {
                name: {"description": about, "content": {JSON: {"schema": error}}}
                for name, about in _ERRORS.items()
            },
        },
    }


def document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI 3.1 document (callers may change it freely)."""
    return copy.deepcopy(_document())
