"""The served OpenAPI document and the server agree: schemathesis sends every operation requests
made from the document (valid ones, and ones that break it) and checks every answer with all its
checks, against the Flask app in-process on a database with data.

The run is derandomized and bounded, so it is the same run every time and takes about half a
minute. Valid requests are first given what a schema cannot say (see :func:`consistent`);
everything else the server must accept or refuse exactly as the document says, with a 4xx JSON
error when refused.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

schemathesis = pytest.importorskip("schemathesis")

import jsonschema  # noqa: E402
from hypothesis import HealthCheck, Phase, reject, settings  # noqa: E402
from schemathesis import DataGenerationMethod, GenerationConfig, experimental  # noqa: E402
from schemathesis.checks import ALL_CHECKS  # noqa: E402
from schemathesis.constants import NOT_SET  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402

from pandaflow.errorcodes import ErrorCode  # noqa: E402
from pandaflow.harvester import workers as w  # noqa: E402
from pandaflow.server.app import sync_queues  # noqa: E402
from pandaflow.server.jobs import pilots  # noqa: E402
from pandaflow.server.jobs.queues import parse_queues  # noqa: E402

experimental.OPEN_API_3_1.enable()  # the document is OpenAPI 3.1
# Schemathesis' coverage phase adds the boundary cases of every parameter (empty strings, limits,
# missing fields, methods a path does not take): thorough, but ~3 minutes here. Run with
# PANDAFLOW_FUZZ_COVERAGE=1 after changing the API; the suite runs the random phase only.
COVERAGE = os.environ.get("PANDAFLOW_FUZZ_COVERAGE") == "1"
if COVERAGE:
    experimental.COVERAGE_PHASE.enable()

TOKEN = "t"  # tests/conftest.py's server token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INT_MAX = 2**31 - 1
# Two sites whose queues hold any job, so that brokerage never refuses a valid job.
FUZZ_QUEUES = [
    {"name": "anywhere", "site": "A", "max_memory_mb": INT_MAX, "cores": INT_MAX},
    {"name": "elsewhere", "site": "B", "max_memory_mb": INT_MAX, "cores": INT_MAX},
]
CHECKS = (
    *ALL_CHECKS,
    openapi_checks.positive_data_acceptance,
    openapi_checks.missing_required_header,
    openapi_checks.unsupported_method,
    openapi_checks.use_after_free,
    openapi_checks.ensure_resource_availability,
)
EXAMPLES = 20  # per operation and test: about half a minute for the whole API


@pytest.fixture
def queues(engine):
    found = parse_queues(FUZZ_QUEUES)
    sync_queues(engine, found)
    return found


@pytest.fixture
def seeded(engine, workload):
    """A workflow with finished, failed, ready and running jobs, logs, memory samples, pilots,
    workers and a harvester's status: answers with every kind of row for the schemas to check."""
    ids = workload.submit([{"name": f"job-{i}", "env": {"A": "1"}} for i in range(4)], workflow="seed")
    control = workload.submit([{"name": f"other-{i}"} for i in range(3)], workflow="control")
    pilot = workload.pilot("pilot-1", queue="anywhere")
    workload.dispatch(pilot, queue="anywhere", n=4)
    workload.report(ids[0], ok=True, log=b"done\n", memory_samples=[(1.0, 10.5, 9.0)])
    failed = int(ErrorCode.PAYLOAD_EXCEPTION)
    workload.report(ids[1], ok=False, error_code=failed, error_diag="boom", stdout_tail="x")
    workload.report(control[0], ok=False, error_code=failed)
    now = time.time()
    with engine.begin() as conn:
        worker = w.create(conn, queue="anywhere", harvester="h1", provider="local", cores=1, memory_mb=None,
                          now=now)  # fmt: skip
        w.accepted(conn, worker, "1001", None, now)
        pilots.register(conn, {"pilot": "p-w", "queue": "anywhere", "cores": 1, "worker_id": worker}, now)
        status = {"cycle_at": now, "ready_jobs": 1, "ready_cores": 1, "idle_slots": 0, "queued_workers": 0,
                  "running_workers": 1, "action": "nothing to do", "error": "", "error_at": None}  # fmt: skip
        w.record_queue(conn, "h1", "anywhere", status)
    SEEDED.update(read=(1, ids), control=(2, control))
    return ids


@pytest.fixture
def served_document(app, api, seeded):
    document = api.get("/api/v1/openapi.json").get_json()
    return schemathesis.from_dict(
        document,
        app=app,
        base_url="/api/v1",
        data_generation_methods=DataGenerationMethod.all(),
        # The bearer token is not a parameter to fuzz: every request carries the right one (and the
        # ignored_auth check sends each without it too).
        generation_config=GenerationConfig(allow_x00=False, with_security_parameters=False),
    )


schema = schemathesis.from_pytest_fixture("served_document")
_serial = itertools.count()
SEEDED: dict[str, tuple[int, list[int]]] = {}  # workflow id and job ids: "read" ones, "control" ones


def known_ids(case) -> None:
    """Path ids and the ids of cancel/retry bodies name the seeded workflows and jobs (those of a
    workflow of its own for cancel and retry) unless schemathesis broke them on purpose: unknown
    ids would stop every request at its 404, before its query or body is looked at."""
    workflow, jobs = SEEDED["control" if case.path.endswith(("/cancel", "/retry")) else "read"]
    # A broken query or body would never be looked at behind a broken path: mend the path then
    # (if the request turns out valid that way, call() drops it).
    elsewhere = case.data_generation_method.is_negative and (bool(case.query) or case.body is not NOT_SET)
    if case.meta.description and case.meta.description.startswith("Unspecified HTTP method"):
        elsewhere = True  # a method the path does not take: the path must exist for its 405
    for name, value in (case.path_parameters or {}).items():
        if _an_id(value) or elsewhere:
            job = jobs[next(_serial) % len(jobs)]
            case.path_parameters[name] = workflow if name == "workflow_id" else job
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("ids"), list) and all(map(_an_id, body["ids"])):
        body["ids"] = [jobs[i % len(jobs)] for i in range(len(body["ids"]))]


def _an_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_MAX


def sent_as_the_document_allows(case, response) -> bool:
    """Whether the request as it went out fits the document after all. Schemathesis 3 breaks some
    parameters in ways that vanish on the wire (an unknown query parameter whose value is an empty
    list is not sent at all); such a request is a valid one, and its 2xx answer is right."""
    sent = parse_qsl(urlsplit(response.request.url).query, keep_blank_values=True)
    document = case.operation.schema.raw_schema
    declared = {p["name"]: p["schema"] for p in case.operation.definition.raw.get("parameters", ())
                if p["in"] == "query"}  # fmt: skip
    names = [name for name, _ in sent]
    for name, value in sent:
        if name not in declared or names.count(name) != 1:
            return False
        if declared[name].get("type") == "integer":
            if not re.fullmatch(r"-?[0-9]+", value):
                return False
            value = int(value)
        if not jsonschema.Draft202012Validator(declared[name]).is_valid(value):
            return False
    if case.body is NOT_SET or not case.operation.definition.raw.get("requestBody"):
        return True
    body_schema = case.operation.definition.raw["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**body_schema, "components": document["components"]})
    return validator.is_valid(case.body)


def _without_nul(value):
    """The value with NUL characters taken out of every string and object key: the document refuses
    them everywhere (its description says so), and schemathesis leaves them in free objects' keys."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def consistent(case) -> None:
    """Give a valid request what its schema cannot say, so that the server may not refuse it: known
    queue and site names, uids and job names unique in the request, a graph whose parents and
    inputs exist (inputs declared available, outputs unique) and memory_max_mb not below memory_mb.
    The server's refusals of these are tested in test_api.py, test_dag.py and test_sites.py."""
    if case.body is not NOT_SET:
        case.body = _without_nul(case.body)
    if case.query:
        if "queue" in case.query and case.path in ("/jobs", "/workers"):
            case.query["queue"] = "anywhere"
    body = case.body
    if case.path == "/loops" and isinstance(body, dict) and isinstance(body.get("name"), str):
        body["name"] = f"F{next(_serial)}-{body['name']}"[:100]  # a new loop, not one with other settings
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        return
    serial = next(_serial)
    available = list(body.get("available") or [])
    policy = "site" in body or "sites" in body
    if "site" in body:
        body["site"] = "A"
    if "sites" in body:
        body["sites"] = dict(zip(("A", "B"), body["sites"].values(), strict=False))
    for i, job in enumerate(body["jobs"]):
        if job.get("queue") is not None:
            job["queue"] = None if policy else "anywhere"
        if job.get("uid"):
            job["uid"] = f"{serial}-{i}-{job['uid']}"[:96]
        job["name"] = f"{serial}-{i}-{job.get('name') or 'job'}"[:255]
        job["parents"] = None
        if job.get("outputs"):
            job["outputs"] = [f"{serial}/{i}/{k}" for k in range(len(job["outputs"]))]
        available += [p for p in job.get("inputs") or () if p not in available]
        cap, memory = job.get("memory_max_mb"), job.get("memory_mb")
        if cap is not None and memory and cap < memory:
            job["memory_max_mb"] = memory
    if available:
        body["available"] = available


_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate] if COVERAGE else [Phase.generate],  # explicit: coverage cases
)


def call(case):
    known_ids(case)
    case.headers = case.headers or {}  # where ignored_auth puts a wrong token on its second send
    response = case.call(headers=AUTH)
    if case.data_generation_method.is_negative and response.status_code < 300:
        if sent_as_the_document_allows(case, response):
            reject()
    case.validate_response(response, checks=CHECKS, headers=AUTH)
    return response


@schema.parametrize(data_generation_methods=[DataGenerationMethod.positive])
@_SETTINGS
def test_requests_the_document_allows_are_accepted(case):
    consistent(case)
    call(case)


def takes_nothing(ctx) -> bool:
    """An operation without parameters or body, which no request can break."""
    raw = ctx.operation.definition.raw
    return not raw.get("parameters") and "requestBody" not in raw


@schema.exclude(takes_nothing).parametrize(data_generation_methods=[DataGenerationMethod.negative])
@_SETTINGS
def test_requests_the_document_forbids_are_refused_with_a_json_4xx(case):
    call(case)
