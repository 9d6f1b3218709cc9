"""The OpenAPI 3.1 description of the REST API ``/api/v1`` (served at ``GET /api/v1/openapi.json``).

Written as data beside :mod:`pandaflow.server.api`; a test checks that every route of the
blueprint is described here, so the two cannot drift apart silently.
"""

from __future__ import annotations

import copy
from typing import Any

from pandaflow.harvester.workers import STATES as WORKER_STATES
from pandaflow.server.queries import (
    BPS_COLUMNS,
    BPS_RUN_STATES,
    DEFAULT_LIMIT,
    DERIVED_STATES,
    MAX_LIMIT,
    PILOT_STATES,
)
from pandaflow.server.states import ALL_STATES

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    schema["required"] = list(properties) if required is None else required
    return schema


def _page(key: str, item: str) -> dict[str, Any]:
    return _obj(
        {
            key: {"type": "array", "items": _ref(item)},
            "total": {"type": "integer", "description": "items matching, over all pages"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        }
    )


TIME = _nullable("string", format="date-time", description="ISO-8601 UTC time")
INT = {"type": "integer"}
NINT = _nullable("integer")
NNUM = _nullable("number")
STR = {"type": "string"}
NSTR = _nullable("string")
JOB_STATE = {"type": "string", "enum": list(ALL_STATES)}
NAMES = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 500}}
COUNTS = _obj({state: INT for state in ALL_STATES}, description="number of jobs in each state")
SITE_SHARES = {
    "type": "object",
    "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
    "minProperties": 1,
    "description": "spread the jobs over sites by share: site name -> share (weights, normalised: "
    "{\"FrDF\": 0.5, \"UKDF\": 0.25, \"USDF\": 0.25} and {\"FrDF\": 2, \"UKDF\": 1, \"USDF\": 1} "
    "mean the same). Each job shape goes to the sites that have a queue able to hold it, shares "
    "renormalised among them, then to the tightest queue there. Not with 'site'",
}
SITE_PIN = {"type": "string", "minLength": 1, "description": "pin every job to this site. Not with 'sites'"}
SITES_OUT = _nullable(
    "object",
    additionalProperties={"type": "number"},
    description="the sites the workflow's jobs are spread over, with shares summing to 1 (one site: "
    "pinned); null: any site",
)


def _group(extra: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {
            **extra,
            "status": {
                "type": "string",
                "enum": list(DERIVED_STATES),
                "description": "derived from the job counts: running while any job has not ended; "
                "finished if all finished; subfinished if some finished; cancelled if all were "
                "cancelled; failed otherwise; empty without jobs",
            },
            "n_jobs": INT,
            "counts": _ref("Counts"),
        }
    )


_JOB = {
    "id": INT,
    "uid": {"type": "string", "description": "client key; resubmitting a uid is idempotent"},
    "name": STR,
    "workflow_id": INT,
    "task_id": INT,
    "task": {"type": "string", "description": "task name"},
    "kind": {"type": "string", "enum": ["python", "shell"]},
    "status": JOB_STATE,
    "panda_status": {"type": "string", "description": "the equivalent PanDA job status"},
    "queue": NSTR,
    "priority": INT,
    "cores": INT,
    "memory_mb": NINT,
    "disk_mb": NINT,
    "walltime_s": NNUM,
    "attempt": {"type": "integer", "description": "dispatches so far"},
    "max_attempts": INT,
    "pilot_id": NINT,
    "worker_id": {**NINT, "description": "push queues: the worker the job is (or was) reserved for"},
    "error_code": INT,
    "error_name": STR,
    "error_diag": STR,
    "exit_code": NINT,
    "max_rss_mb": NNUM,
    "max_pss_mb": NNUM,
    "created_at": TIME,
    "updated_at": TIME,
    "dispatched_at": TIME,
    "started_at": TIME,
    "ended_at": TIME,
    "duration_s": {**NNUM, "description": "ended_at - started_at, seconds"},
}

_ATTEMPT = {
    "attempt": INT,
    "status": {"type": "string", "enum": ["dispatched", "running", "finished", "failed"]},
    "pilot_id": NINT,
    "pilot": {**NSTR, "description": "pilot name"},
    "queue": NSTR,
    "error_code": INT,
    "error_name": STR,
    "error_description": STR,
    "error_diag": STR,
    "exit_code": NINT,
    "dispatched_at": TIME,
    "started_at": TIME,
    "ended_at": TIME,
    "duration_s": NNUM,
    "max_rss_mb": NNUM,
    "max_pss_mb": NNUM,
    "memory_samples": {
        "type": "array",
        "items": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "description": "[time, rss MB, pss MB] samples",
    },
    "has_log": {"type": "boolean"},
}

_JOB_SPEC = _obj(
    {
        "uid": {"type": "string", "description": "client key (default: generated)"},
        "name": STR,
        "task": {"type": "string", "description": "task the job belongs to (default: 'default')"},
        "kind": {"type": "string", "enum": ["shell", "python"], "description": "default: shell if 'command'"},
        "command": {"type": "string", "description": "shell command (shell jobs)"},
        "buffer_b64": {"type": "string", "contentEncoding": "base64",
                       "description": "parsl pack_apply_message bytes, base64 (python jobs)"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cores": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        "memory_mb": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "disk_mb": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "walltime_s": {"type": "number", "exclusiveMinimum": 0},
        "priority": INT,
        "queue": {"type": "string", "description": "default: chosen by brokerage"},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        "memory_multiplier": {"type": "number", "minimum": 1, "maximum": 100,
                              "description": "after an out-of-memory kill, the next attempt asks memory_mb "
                              "times this (re-brokered to a queue that holds it)"},
        "memory_max_mb": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1,
                          "description": "cap of the grown memory request (not below memory_mb)"},
        "retry_unless_exit": {"type": "array", "items": INT, "description": "exit codes never retried"},
        "always": {
            "type": "boolean",
            "description": "run once every input and parent has ended, whatever the outcome: inputs that"
            " can never exist are skipped instead of pruning the job (a final or clean-up job;"
            " bps finalJob with whenRun ALWAYS)",
        },
        "inputs": {**NAMES, "description": "data products the job reads: it stays pending until all "
                   "are available (written by a finished job, or declared in 'available')"},
        "outputs": {**NAMES, "description": "data products the job writes (one writer per product)"},
        "parents": {**NAMES, "description": "names of jobs of the same submission that must finish first"},
    },
    required=[],
    additionalProperties=False,
)  # fmt: skip

BPS_COUNTS = _obj(
    {column: INT for column in (*BPS_COLUMNS, "EXPECTED")},
    description="jobs in each BPS state (WmsStates names); EXPECTED: all jobs of the label",
)

_SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "error": {"type": "string", "description": "what was wrong and what to do"},
            "problems": {"type": "array", "items": STR, "description": "every refused job (submission)"},
        },
        required=["error"],
    ),
    "Counts": COUNTS,
    "Info": _obj(
        {"version": STR, "zmq": {**NSTR, "description": "ZeroMQ endpoint of pilots"}, "epoch": NSTR}
    ),
    "Workflow": _group(
        {"id": INT, "name": STR, "owner": STR, "client": NSTR, "sites": SITES_OUT, "created_at": TIME,
         "updated_at": TIME}
    ),  # fmt: skip
    "WorkflowDetail": {
        "allOf": [_ref("Workflow"), _obj({"tasks": {"type": "array", "items": _ref("Task")}})],
    },
    "Task": _group({"id": INT, "workflow_id": INT, "name": STR, "priority": INT, "created_at": TIME}),
    "Job": _obj(_JOB),
    "Attempt": _obj(_ATTEMPT),
    "JobDetail": {
        "allOf": [
            _ref("Job"),
            _obj(
                {
                    "error_description": STR,
                    "bps_status": STR,
                    "client": NSTR,
                    "command": NSTR,
                    "env": _nullable("object", additionalProperties={"type": "string"}),
                    "stdout_tail": STR,
                    "has_result": {"type": "boolean"},
                    "result_is_exception": {"type": "boolean"},
                    "attempts": {"type": "array", "items": _ref("Attempt")},
                }
            ),
        ]
    },
    "Log": _obj(
        {
            "job_id": INT,
            "attempt": INT,
            "source": {
                "type": "string",
                "enum": ["log", "tail", "none"],
                "description": "log: uploaded by the pilot; tail: stdout tail only; none: nothing",
            },
            "text": STR,
        }
    ),  # fmt: skip
    "Pilot": _obj(
        {
            "id": INT,
            "name": STR,
            "queue": STR,
            "status": {"type": "string", "enum": list(PILOT_STATES)},
            "host": STR,
            "pid": NINT,
            "cores": INT,
            "memory_mb": NINT,
            "workdir": STR,
            "version": STR,
            "jobs_held": {"type": "integer", "description": "dispatched or running jobs on it now"},
            "n_done": INT,
            "n_failed": INT,
            "registered_at": TIME,
            "last_heartbeat_at": TIME,
            "heartbeat_age_s": NNUM,
            "ended_at": TIME,
        }
    ),
    "Queue": _obj(
        {
            "name": STR,
            "site": STR,
            "min_memory_mb": INT,
            "max_memory_mb": INT,
            "cores": INT,
            "max_walltime_s": {"type": "number"},
            "status": {"type": "string", "enum": ["online", "offline"]},
            "mode": {"type": "string", "enum": ["pull", "push"]},
            "brokerage": {"type": "boolean"},
            "description": STR,
            "ready_jobs": INT,
            "reserved_jobs": {"type": "integer", "description": "push queues: jobs reserved for a worker"},
            "dispatched_jobs": INT,
            "running_jobs": INT,
            "active_pilots": INT,
            "updated_at": TIME,
            "harvesters": {
                "type": "array",
                "items": _ref("HarvesterStatus"),
                "description": "each harvester serving the queue, as of its last cycle (empty: none)",
            },
        },
        required=["name", "ready_jobs", "reserved_jobs", "dispatched_jobs", "running_jobs", "active_pilots",
                  "updated_at", "harvesters"],
        additionalProperties=True,
    ),  # fmt: skip
    "HarvesterStatus": _obj(
        {
            "queue": STR,
            "harvester": {"type": "string", "description": "its name (--name, the host name by default)"},
            "cycle_at": {**TIME, "description": "end of its last cycle on the queue"},
            "ready_jobs": {"type": "integer", "description": "demand: ready jobs its pilots can take"},
            "ready_cores": {"type": "integer", "description": "demand in job slots"},
            "unfit_jobs": {"type": "integer", "description": "ready jobs larger than the queue's pilots"},
            "idle_slots": {"type": "integer", "description": "supply: free slots of pilots and of workers"},
            "queued_workers": {"type": "integer", "description": "workers waiting in the provider"},
            "running_workers": INT,
            "action": {"type": "string", "description": "what the last cycle did, and why"},
            "error": {"type": "string", "description": "the last provider failure ('' once it works again)"},
            "error_at": {**TIME, "description": "when the last failure was seen"},
        }
    ),
    "Worker": _obj(
        {
            "id": {"type": "integer", "description": "the pilot's --worker-id"},
            "queue": STR,
            "state": {"type": "string", "enum": list(WORKER_STATES)},
            "batch_state": {**NSTR, "description": "the provider's last word (a parsl JobState name)"},
            "provider": STR,
            "provider_job_id": {**NSTR, "description": "e.g. the Slurm job id; null until accepted"},
            "harvester": STR,
            "cores": INT,
            "memory_mb": NINT,
            "pilot_id": {**NINT, "description": "the pilot that registered from it"},
            "pilot": {**NSTR, "description": "that pilot's name"},
            "error": STR,
            "submitted_at": TIME,
            "started_at": TIME,
            "ended_at": TIME,
            "age_s": {"type": "number", "description": "seconds from submission to its end (or to now)"},
        }
    ),
    "WorkerPage": {
        "allOf": [
            _page("workers", "Worker"),
            _obj(
                {
                    "queues": {
                        "type": "array",
                        "items": _ref("HarvesterStatus"),
                        "description": "the harvesters' status of the queue filtered on (of every queue)",
                    }
                }
            ),
        ]
    },
    "Summary": _obj(
        {
            "at": TIME,
            "workflows": INT,
            "n_jobs": INT,
            "jobs": _ref("Counts"),
            "pilots": _obj({state: INT for state in PILOT_STATES}),
            "queues": {"type": "array", "items": _ref("Queue")},
        }
    ),
    "ErrorGroup": _obj(
        {
            "workflow_id": INT,
            "task_id": INT,
            "task": STR,
            "error_code": INT,
            "error_name": STR,
            "description": STR,
            "jobs": {"type": "integer", "description": "jobs whose latest attempt ended with this code"},
            "attempts": {"type": "integer", "description": "attempts that ended with this code"},
            "example_diag": STR,
        }
    ),
    "ErrorSummary": _obj({"workflow_id": NINT, "errors": {"type": "array", "items": _ref("ErrorGroup")}}),
    "ErrorCode": _obj({"code": INT, "name": STR, "retryable": {"type": "boolean"}, "description": STR}),
    "ErrorCodes": _obj({"error_codes": {"type": "array", "items": _ref("ErrorCode")}}),
    "JobSpec": _JOB_SPEC,
    "SubmitRequest": _obj(
        {
            "name": {"type": "string", "minLength": 1, "description": "workflow name"},
            "owner": STR,
            "jobs": {"type": "array", "items": _ref("JobSpec"), "minItems": 1},
            "available": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "data products that exist already (inputs nobody in the workflow writes)",
            },
            "sites": SITE_SHARES,
            "site": SITE_PIN,
        },
        required=["name", "jobs"],
        additionalProperties=False,
    ),
    "AppendRequest": _obj(
        {
            "jobs": {"type": "array", "items": _ref("JobSpec"), "minItems": 1},
            "available": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "data products that exist already",
            },
        },
        required=["jobs"],
        additionalProperties=False,
    ),
    "Submitted": _obj(
        {
            "workflow_id": INT,
            "job_ids": {"type": "object", "additionalProperties": INT, "description": "uid -> job id"},
            "duplicates": {"type": "array", "items": STR, "description": "uids stored by an earlier request"},
            "sites": {
                "type": "object",
                "additionalProperties": INT,
                "description": "workflows with sites only: jobs this request stored at each site",
            },
        },
        required=["workflow_id", "job_ids", "duplicates"],
    ),
    "JobIds": _obj(
        {
            "ids": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                "minItems": 1,
                "maxItems": 100_000,
            },
            "extra_attempts": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1000,
                "description": "retry only; default 1",
            },
        },
        required=["ids"],
        additionalProperties=False,
    ),
    "RetryOptions": _obj(
        {
            "extra_attempts": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
            "task": {"type": "string", "minLength": 1, "description": "only the jobs of this task (label)"},
        },
        required=[],
        additionalProperties=False,
    ),
    "TaskOption": _obj(
        {"task": {"type": "string", "minLength": 1, "description": "only the jobs of this task (label)"}},
        required=[],
        additionalProperties=False,
    ),
    "JobEvents": _obj(
        {
            "job_id": INT,
            "status": JOB_STATE,
            "events": {
                "type": "array",
                "items": _obj(
                    {
                        "at": _nullable("string"),
                        "attempt": INT,
                        "from": {"anyOf": [JOB_STATE, {"type": "null"}]},
                        "to": JOB_STATE,
                        "event": STR,
                        "pilot_id": _nullable("integer"),
                        "pilot": _nullable("string"),
                        "reason": STR,
                    }
                ),
                "description": "the submission, then every change of state, oldest first",
            },
        }
    ),
    "ControlResult": _obj(
        {
            "action": {"type": "string", "enum": ["cancel", "retry", "hold", "release"]},
            "changed": {"type": "array", "items": INT, "description": "ids of jobs that changed state"},
            "skipped": {
                "type": "array",
                "items": _obj({"id": INT, "status": JOB_STATE, "reason": STR}),
                "description": "jobs named but left as they were, and why",
            },
        }
    ),
    "BpsCounts": BPS_COUNTS,
    "Report": _obj(
        {
            "id": INT,
            "name": STR,
            "owner": STR,
            "client": NSTR,
            "sites": SITES_OUT,
            "created_at": TIME,
            "updated_at": TIME,
            "status": {"type": "string", "enum": list(DERIVED_STATES), "description": "derived status"},
            "bps_state": {
                "type": "string",
                "enum": sorted(set(BPS_RUN_STATES.values())),
                "description": "the run's state as bps names it",
            },
            "n_jobs": INT,
            "percent_succeeded": {**NINT, "description": "integer percentage of jobs that succeeded"},
            "columns": {"type": "array", "items": STR, "description": "the columns of the table, in order"},
            "total": _ref("BpsCounts"),
            "labels": {
                "type": "array",
                "items": _obj({"label": STR, "task_id": INT, "counts": _ref("BpsCounts")}),
                "description": "one row per task (pipeline label), in submission order",
            },
        }
    ),
    "WorkflowPage": _page("workflows", "Workflow"),
    "TaskPage": _page("tasks", "Task"),
    "JobPage": _page("jobs", "Job"),
    "PilotPage": _page("pilots", "Pilot"),
    "QueueList": _obj({"queues": {"type": "array", "items": _ref("Queue")}}),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


_RESPONSES = {
    "BadRequest": _error("the request was refused; the message says why and what to do"),
    "Unauthorized": _error("missing or wrong bearer token"),
    "NotFound": _error("no such object"),
    "InternalError": _error("a bug of the server (logged there)"),
}


def _ok(schema: str, description: str = "OK", status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": _ref(schema)}}}}


def _op(
    summary: str,
    op_id: str,
    tag: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = True,
    not_found: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "operationId": op_id, "tags": [tag]}
    if description:
        out["description"] = description
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = {"required": body_required, "content": {JSON: {"schema": _ref(body)}}}
    errors = {
        "400": {"$ref": "#/components/responses/BadRequest"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "500": {"$ref": "#/components/responses/InternalError"},
    }
    if not_found:
        errors["404"] = {"$ref": "#/components/responses/NotFound"}
    out["responses"] = {**responses, **dict(sorted(errors.items()))}
    return out


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
               "page size")  # fmt: skip
OFFSET = _query(
    "offset", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0}, "items to skip"
)
WORKFLOW_FILTER = _query(
    "workflow_id", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "only this workflow"
)
WORKFLOW_ID = _path("workflow_id", "workflow id")
JOB_ID = _path("job_id", "job id")

_PATHS: dict[str, Any] = {
    "/info": {
        "get": _op(
            "Server version and the ZeroMQ endpoint pilots connect to", "getInfo", "server", _ok("Info")
        )
    },
    "/openapi.json": {
        "get": _op(
            "This document",
            "getOpenApi",
            "server",
            {
                "200": {
                    "description": "OpenAPI 3.1 document",
                    "content": {JSON: {"schema": {"type": "object"}}},
                }
            },
        )
    },  # fmt: skip
    "/workflows": {
        "post": _op(
            "Submit a workflow: all jobs are stored, or none",
            "submitWorkflow",
            "workflows",
            _ok("Submitted", "stored; jobs without unmet inputs are ready", "201"),
            body="SubmitRequest",
            description="Every job is validated and brokered first; one refused job refuses the whole "
            "request (400 with 'problems' listing each). Shell jobs give 'command'; python jobs give "
            "'buffer_b64'. Jobs with 'inputs'/'outputs'/'parents' form a graph that is checked as a "
            "whole (cycles, duplicate names, unknown parents, two writers of a product, inputs without "
            "a producer are refused); such jobs are stored pending until their inputs are available.",
        ),
        "get": _op(
            "List workflows, newest first",
            "listWorkflows",
            "workflows",
            _ok("WorkflowPage"),
            params=[LIMIT, OFFSET],
        ),  # fmt: skip
    },
    "/workflows/{workflow_id}": {
        "get": _op(
            "One workflow with its tasks",
            "getWorkflow",
            "workflows",
            _ok("WorkflowDetail"),
            params=[WORKFLOW_ID],
            not_found=True,
        )  # fmt: skip
    },
    "/workflows/{workflow_id}/tasks": {
        "get": _op(
            "The tasks of a workflow",
            "listWorkflowTasks",
            "workflows",
            _ok("TaskPage"),
            params=[WORKFLOW_ID, LIMIT, OFFSET],
            not_found=True,
        )  # fmt: skip
    },
    "/workflows/{workflow_id}/report": {
        "get": _op(
            "A workflow's jobs by task (label) and BPS state, as `bps report` shows them",
            "getWorkflowReport",
            "workflows",
            _ok("Report"),
            params=[WORKFLOW_ID],
            not_found=True,
            description="Pandaflow job states map to BPS WmsStates: pending UNREADY, ready READY, "
            "reserved (push queues) PENDING, dispatched PENDING, running RUNNING, cancelled DELETED, "
            "held HELD, finished SUCCEEDED, failed FAILED, pruned PRUNED.",
        )
    },
    "/workflows/{workflow_id}/jobs": {
        "post": _op(
            "Add jobs to a workflow (a large DAG in pieces, each all or nothing)",
            "appendJobs",
            "workflows",
            _ok("Submitted", "stored; jobs without unmet inputs are ready", "201"),
            params=[WORKFLOW_ID],
            body="AppendRequest",
            not_found=True,
            description="Validated like a submission; a piece may read products that earlier pieces "
            "write. Parents name jobs of the same piece.",
        )
    },
    "/workflows/{workflow_id}/cancel": {
        "post": _op(
            "Cancel every job of a workflow (or of one task) that has not ended",
            "cancelWorkflow",
            "workflows",
            _ok("ControlResult"),
            params=[WORKFLOW_ID],
            body="TaskOption",
            body_required=False,
            not_found=True,
        )  # fmt: skip
    },
    "/workflows/{workflow_id}/hold": {
        "post": _op(
            "Hold the waiting jobs of a workflow (or of one task): neither dispatched nor pruned",
            "holdWorkflow",
            "workflows",
            _ok("ControlResult"),
            params=[WORKFLOW_ID],
            body="TaskOption",
            body_required=False,
            not_found=True,
        )  # fmt: skip
    },
    "/workflows/{workflow_id}/release": {
        "post": _op(
            "Release the held jobs of a workflow (or of one task) to where they were",
            "releaseWorkflow",
            "workflows",
            _ok("ControlResult"),
            params=[WORKFLOW_ID],
            body="TaskOption",
            body_required=False,
            not_found=True,
        )  # fmt: skip
    },
    "/workflows/{workflow_id}/retry": {
        "post": _op(
            "Retry every failed or cancelled job of a workflow",
            "retryWorkflow",
            "workflows",
            _ok("ControlResult"),
            params=[WORKFLOW_ID],
            body="RetryOptions",
            body_required=False,
            not_found=True,
        )  # fmt: skip
    },
    "/tasks": {
        "get": _op(
            "List tasks ordered by id",
            "listTasks",
            "tasks",
            _ok("TaskPage"),
            params=[WORKFLOW_FILTER, LIMIT, OFFSET],
        )  # fmt: skip
    },
    "/jobs": {
        "get": _op(
            "List jobs ordered by id, filtered",
            "listJobs",
            "jobs",
            _ok("JobPage"),
            params=[
                WORKFLOW_FILTER,
                _query("task_id", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "only this task"),
                _query(
                    "status", {"type": "string"}, f"one or more of {', '.join(ALL_STATES)}, comma-separated"
                ),
                _query("queue", {"type": "string"}, "only this queue"),
                _query(
                    "pilot_id",
                    {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                    "only jobs (last) dispatched to this pilot",
                ),
                _query("name", {"type": "string"}, "substring of the job name"),
                LIMIT,
                OFFSET,
            ],
        )
    },
    "/jobs/{job_id}": {
        "get": _op(
            "One job with its attempt history",
            "getJob",
            "jobs",
            _ok("JobDetail"),
            params=[JOB_ID],
            not_found=True,
        )  # fmt: skip
    },
    "/jobs/{job_id}/log": {
        "get": _op(
            "The log of a job's latest attempt (or of one attempt)",
            "getJobLog",
            "jobs",
            {
                "200": {
                    "description": "the log text; with 'Accept: application/json', a Log object",
                    "headers": {
                        "X-Pandaflow-Attempt": {"schema": {"type": "integer"}},
                        "X-Pandaflow-Log-Source": {
                            "schema": {"type": "string", "enum": ["log", "tail", "none"]}
                        },
                    },
                    "content": {"text/plain": {"schema": STR}, JSON: {"schema": _ref("Log")}},
                }
            },
            params=[
                JOB_ID,
                _query(
                    "attempt",
                    {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                    "attempt number (default: latest)",
                ),
            ],
            not_found=True,
        )
    },
    "/jobs/{job_id}/events": {
        "get": _op(
            "A job's timeline: its submission and every change of its state",
            "getJobEvents",
            "jobs",
            _ok("JobEvents"),
            params=[JOB_ID],
            not_found=True,
        )  # fmt: skip
    },
    "/jobs/hold": {
        "post": _op("Hold waiting jobs by id", "holdJobs", "jobs", _ok("ControlResult"), body="JobIds",
                    not_found=True)  # fmt: skip
    },
    "/jobs/release": {
        "post": _op("Release held jobs by id", "releaseJobs", "jobs", _ok("ControlResult"), body="JobIds",
                    not_found=True)  # fmt: skip
    },
    "/jobs/cancel": {
        "post": _op(
            "Cancel jobs by id", "cancelJobs", "jobs", _ok("ControlResult"), body="JobIds", not_found=True
        )
    },
    "/jobs/retry": {
        "post": _op(
            "Retry failed or cancelled jobs by id",
            "retryJobs",
            "jobs",
            _ok("ControlResult"),
            body="JobIds",
            not_found=True,
        )  # fmt: skip
    },
    "/pilots": {
        "get": _op(
            "List pilots, newest first",
            "listPilots",
            "pilots",
            _ok("PilotPage"),
            params=[
                _query("status", {"type": "string", "enum": list(PILOT_STATES)}, "only pilots in this state"),
                _query("queue", {"type": "string"}, "only pilots of this queue"),
                LIMIT,
                OFFSET,
            ],
        )
    },
    "/queues": {
        "get": _op(
            "Queues with live job and pilot counts and each harvester's last cycle",
            "listQueues",
            "queues",
            _ok("QueueList"),
        )
    },
    "/workers": {
        "get": _op(
            "List the pilot workers harvesters submitted, newest first, with the queues' harvester status",
            "listWorkers",
            "harvester",
            _ok("WorkerPage"),
            params=[
                _query("queue", {"type": "string"}, "only workers of this queue"),
                _query(
                    "state",
                    {"type": "string"},
                    f"one or more of {', '.join(WORKER_STATES)}, comma-separated",
                ),
                LIMIT,
                OFFSET,
            ],
        )
    },
    "/summary": {
        "get": _op("Jobs by state, pilots by state and queues", "getSummary", "server", _ok("Summary"))
    },
    "/errors": {
        "get": _op(
            "Errors grouped by task and error code",
            "getErrorSummary",
            "jobs",
            _ok("ErrorSummary"),
            params=[WORKFLOW_FILTER],
        )  # fmt: skip
    },
    "/errorcodes": {
        "get": _op("Every error code with its meaning", "listErrorCodes", "server", _ok("ErrorCodes"))
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pandaflow job server",
        "version": "0.1.0",
        "description": "REST API of the pandaflow job server: submit workflows of jobs, follow them, "
        "cancel and retry them. Times are ISO-8601 UTC strings; durations are seconds. Every error "
        "is a JSON object with an 'error' message.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearerAuth": []}],
    "tags": [{"name": t} for t in ("server", "workflows", "tasks", "jobs", "pilots", "queues", "harvester")],
    "paths": _PATHS,
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "the server's token (PANDAFLOW_TOKEN or $PANDAFLOW_HOME/token)",
            }
        },
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
    },
}


def document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI 3.1 document (callers may change it freely)."""
    return copy.deepcopy(_DOCUMENT)
