"""``pandaflow.bps.PandaflowService``: ctrl_bps's WMS interface over a pandaflow job server.

A bps run is one pandaflow workflow; its Run Id is the workflow id. Which server:

1. the bps config: ``pandaflowServerUrl`` and ``pandaflowToken`` (or ``pandaflowTokenFile``);
2. else ``$PANDAFLOW_SERVER`` (token from ``$PANDAFLOW_TOKEN`` or ``$PANDAFLOW_HOME/token``);
3. else the server ``$PANDAFLOW_HOME/server.json`` names, if it answers;
4. else, for ``bps submit`` only, a local server and pilot started in the background
   (:mod:`pandaflow.bps.local`), found by step 3 from any later shell.

bps builds the service with an empty dict for report, status, cancel, restart and ping, so
those use steps 2 and 3 only and never start anything.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lsst.ctrl.bps import BaseWmsService, BpsConfig, WmsRunReport, WmsStates
from lsst.ctrl.bps.bps_config import BPS_DEFAULTS
from lsst.daf.butler import Config

from pandaflow import config as pf_config
from pandaflow.bps import local
from pandaflow.bps.workflow import PandaflowWorkflow, final_job_problem
from pandaflow.client import Client, ClientError
from pandaflow.server.front.queries import BPS_RUN_STATES
from pandaflow.server.jobs.states import EXTERNAL_NAMES

_LOG = logging.getLogger(__name__)

RUN_FILE = "pandaflow_run.json"  # in the submit directory: server url and workflow id
_ENDED = {"finished", "subfinished", "failed", "cancelled"}


class PandaflowBpsError(RuntimeError):
    """A user-fixable problem (no server, unknown run); the message says what to do."""


def _config_value(config: Any, key: str) -> Any:
    if isinstance(config, BpsConfig):
        found, value = config.search(key, opt={"default": None})
        return value if found else None
    if isinstance(config, dict):
        return config.get(key)
    return None


def _bps_state(name: str | None) -> WmsStates:
    try:
        return WmsStates[name] if name else WmsStates.UNKNOWN
    except KeyError:
        return WmsStates.MISFIT


def _job_state(status: str) -> WmsStates:
    return _bps_state(EXTERNAL_NAMES[status][1]) if status in EXTERNAL_NAMES else WmsStates.MISFIT


class PandaflowService(BaseWmsService):
    """Submit, follow and control bps runs as pandaflow workflows (see the module docstring)."""

    def __init__(self, config: BpsConfig | dict | None):
        super().__init__(config if config is not None else {})
        self._client: Client | None = None
        self._local = False

    @property
    def defaults(self) -> Config:
        """pandaflow's defaults: above bps's own, below the submit yaml.

        ``finalJob.requestCpus`` is at most the CPUs of the machine running bps: bps asks 16 and
        the final job runs ``butler aggregate-graph -j 16``, sixteen processes of a few hundred MB
        each, which on a small machine (a local run) takes several times longer than with a few
        and may run out of memory. A site whose pilots have more cores sets it in its yaml.
        """
        bps_cpus = int(BPS_DEFAULTS.get("finalJob", {}).get("requestCpus") or 1)
        return Config({"finalJob": {"requestCpus": min(bps_cpus, local.local_cores())}})

    # ---------------------------------------------------------------- finding the server

    def _configured(self) -> tuple[str, str | None] | None:
        url = _config_value(self.config, "pandaflowServerUrl") or os.environ.get("PANDAFLOW_SERVER")
        if not url:
            return None
        token_file = _config_value(self.config, "pandaflowTokenFile")
        token = pf_config.load_token(_config_value(self.config, "pandaflowToken"), token_file)
        return str(url), token

    def client(self, start: bool = False) -> Client:
        """A client of the configured or running server; with ``start``, start a local one if none."""
        if self._client is not None:
            return self._client
        found = self._configured()
        if found is None and start:
            # Also when server.json names a server already: its pilot may have idled out, and
            # a run on bps's own server is fitted to its pilot whether or not this call started it.
            cores = _config_value(self.config, "pandaflowLocalCores")
            idle = _config_value(self.config, "pandaflowLocalPilotIdle")
            server = local.ensure_local(
                cores=int(cores) if cores else None,
                idle_timeout=float(idle) if idle is not None else local.PILOT_IDLE_TIMEOUT,
            )
            found, self._local = (server.url, server.token), server.managed
            _LOG.info("using the local pandaflow server at %s (home %s)", server.url, server.home)
        elif found is None:
            found = local.running_server()
        if found is None:
            raise PandaflowBpsError(
                "no pandaflow server known: set pandaflowServerUrl in the bps config or PANDAFLOW_SERVER, "
                f"or submit a run first (bps submit starts a local server under {pf_config.home()})"
            )
        self._client = Client(*found)
        return self._client

    # ---------------------------------------------------------------- submission

    def prepare(
        self, config: BpsConfig, generic_workflow, out_prefix: str | None = None
    ) -> PandaflowWorkflow:
        """Translate the generic workflow and write the submission body to the submit directory."""
        problem = final_job_problem(generic_workflow)
        if problem:
            raise PandaflowBpsError(problem)
        service_class = f"{self.__class__.__module__}.{self.__class__.__name__}"
        workflow = PandaflowWorkflow.from_generic_workflow(
            config, generic_workflow, out_prefix, service_class
        )
        if out_prefix is not None:
            workflow.write(out_prefix)
        return workflow

    def submit(self, workflow: PandaflowWorkflow, **kwargs: Any) -> PandaflowWorkflow:
        """Send the workflow to the server; returns once it is recorded, with ``run_id`` set."""
        client = self.client(start=True)
        body = workflow.body
        if self._local:
            cores = _config_value(self.config, "pandaflowLocalCores") or local.local_cores()
            body = local.fit_run(body, int(cores), os.environ)
        try:
            reply = client.submit(body["name"], body["jobs"], owner=body.get("owner"))
        except ClientError as exc:
            problems = "".join(f"\n  {p}" for p in exc.problems[:20])
            raise PandaflowBpsError(f"pandaflow refused the run: {exc}{problems}") from None
        workflow.run_id = str(reply["workflow_id"])
        if workflow.submit_path:
            run = {"url": client.url, "workflow_id": reply["workflow_id"], "name": body["name"],
                   "submitted_at": time.time()}  # fmt: skip
            Path(workflow.submit_path, RUN_FILE).write_text(json.dumps(run))
            _remember(client.url, reply["workflow_id"], workflow.submit_path)
        return workflow

    def run_submission_checks(self) -> None:
        """Fail early if a configured server does not answer (a local one is started at submit)."""
        found = self._configured()
        if found is not None and not local.answers(*found):
            raise PandaflowBpsError(
                f"the pandaflow server {found[0]} does not answer (or refuses the token); "
                "check pandaflowServerUrl / PANDAFLOW_SERVER and the token, or unset them to run locally"
            )

    def ping(self, pass_thru: str | None = None) -> tuple[int, str]:
        found = self._configured() or local.running_server()
        if found is None:
            return 0, (
                f"no pandaflow server running; bps submit will start a local one under {pf_config.home()}"
            )
        try:
            info = Client(*found, timeout=10).info()
        except ClientError as exc:
            return 1, str(exc)
        return 0, f"pandaflow server {found[0]} answers (version {info.get('version', '?')})"

    # ---------------------------------------------------------------- following runs

    def _workflow_id(self, wms_id: Any) -> int:
        """The workflow id of a Run Id, or of a submit directory holding pandaflow_run.json."""
        text = str(wms_id).strip()
        if text.isdigit():
            return int(text)
        run_file = Path(text) / RUN_FILE
        try:
            run = json.loads(run_file.read_text())
        except (OSError, ValueError):
            raise PandaflowBpsError(
                f"{wms_id!r} is neither a pandaflow workflow id nor a submit directory with {RUN_FILE}"
            ) from None
        if self._client is None and not self._configured():
            self._client = Client(run["url"], pf_config.load_token())
        return int(run["workflow_id"])

    def get_status(
        self, wms_workflow_id: str, hist: float = 1, is_global: bool = False
    ) -> tuple[WmsStates, str]:
        try:
            wid = self._workflow_id(wms_workflow_id)
            return _bps_state(self.client().report(wid)["bps_state"]), ""
        except (ClientError, PandaflowBpsError) as exc:
            return WmsStates.UNKNOWN, str(exc)

    def report(
        self,
        wms_workflow_id: str | None = None,
        user: str | None = None,
        hist: float = 0,
        pass_thru: str | None = None,
        is_global: bool = False,
        return_exit_codes: bool = False,
    ) -> tuple[list[WmsRunReport], str]:
        """One detailed report for ``wms_workflow_id``, else a summary of the runs still going
        (plus those updated in the last ``hist`` days), optionally only ``user``'s."""
        try:
            if wms_workflow_id:
                wid = self._workflow_id(wms_workflow_id)
                return [self._run_report(wid, exit_codes=True)], ""
            return self._list_reports(user, hist), ""
        except (ClientError, PandaflowBpsError) as exc:
            if getattr(exc, "status", None) == 404:
                return [], ""
            return [], str(exc)

    def _run_report(self, wid: int, exit_codes: bool) -> WmsRunReport:
        client = self.client()
        data = client.report(wid)
        summary = {
            row["label"]: {_bps_state(col): row["counts"].get(col, 0) for col in data["columns"][:-1]}
            for row in data["labels"]
        }
        totals = {_bps_state(col): data["total"].get(col, 0) for col in data["columns"][:-1]}
        for state in WmsStates:
            totals.setdefault(state, 0)
            for counts in summary.values():
                counts.setdefault(state, 0)
        report = WmsRunReport(
            wms_id=str(wid),
            global_wms_id=f"{client.url}#{wid}",
            path=_recalled(client.url, wid),
            label=data["name"],
            run=data["name"],
            operator=data.get("owner"),
            state=_bps_state(data["bps_state"]),
            total_number_jobs=data["n_jobs"],
            job_state_counts=totals,
            job_summary=summary,
            run_summary=";".join(f"{r['label']}:{r['counts']['EXPECTED']}" for r in data["labels"]),
            jobs=[],
        )
        if exit_codes:
            report.exit_code_summary = self._exit_codes(client, wid, list(summary))
        return report

    def _exit_codes(self, client: Client, wid: int, labels: list[str]) -> dict[str, list[int]]:
        """Exit codes of the failed jobs per label (the pilot's error code when none was seen)."""
        codes: dict[str, list[int]] = {label: [] for label in labels}
        offset = 0
        while True:
            page = client.list_jobs(workflow_id=wid, status="failed", limit=1000, offset=offset)
            for job in page["jobs"]:
                code = job["exit_code"] if job.get("exit_code") not in (None, 0) else job.get("error_code")
                if code:
                    codes.setdefault(job["task"], []).append(int(code))
            offset += len(page["jobs"])
            if not page["jobs"] or offset >= page.get("total", offset):
                return codes

    def _list_reports(self, user: str | None, hist: float) -> list[WmsRunReport]:
        client = self.client()
        since = time.time() - hist * 86400
        reports, offset = [], 0
        while True:
            page = client.list_workflows(limit=500, offset=offset)
            for wf in page["workflows"]:
                if user and wf.get("owner") != user:
                    continue
                if wf["status"] in _ENDED and _epoch(wf.get("updated_at")) < since:
                    continue
                reports.append(self._summary_report(client, wf))
            offset += len(page["workflows"])
            if not page["workflows"] or offset >= page.get("total", offset):
                return reports

    def _summary_report(self, client: Client, wf: dict[str, Any]) -> WmsRunReport:
        counts: dict[WmsStates, int] = defaultdict(int)
        for status, n in (wf.get("counts") or {}).items():
            counts[_job_state(status)] += n
        return WmsRunReport(
            wms_id=str(wf["id"]),
            global_wms_id=f"{client.url}#{wf['id']}",
            path=_recalled(client.url, wf["id"]),
            label=wf["name"],
            run=wf["name"],
            operator=wf.get("owner"),
            state=_bps_state(BPS_RUN_STATES.get(wf["status"])),
            total_number_jobs=wf.get("n_jobs", 0),
            job_state_counts={state: counts.get(state, 0) for state in WmsStates},
            jobs=[],
        )

    def list_submitted_jobs(
        self, wms_id=None, user=None, require_bps=True, pass_thru=None, is_global=False
    ) -> list[str]:
        """The Run Id given if the server knows it, else the ids of the runs not yet ended."""
        try:
            if wms_id is not None:
                wid = self._workflow_id(wms_id)
                self.client().get_workflow(wid)
                return [str(wid)]
            return [r.wms_id for r in self._list_reports(user, 0) if r.state == WmsStates.RUNNING]
        except (ClientError, PandaflowBpsError) as exc:
            _LOG.warning("%s", exc)
            return []

    # ---------------------------------------------------------------- control

    def cancel(self, wms_id: str, pass_thru: str | None = None) -> tuple[bool, str]:
        """Cancel every job of the run that has not ended (running ones are killed)."""
        try:
            reply = self.client().cancel_workflow(self._workflow_id(wms_id))
        except (ClientError, PandaflowBpsError) as exc:
            return False, str(exc)
        return True, f"cancelled {len(reply.get('changed', []))} job(s)"

    def restart(self, wms_workflow_id: str) -> tuple[str | None, str | None, str]:
        """Give the run's failed and cancelled jobs another attempt; the Run Id stays the same."""
        try:
            wid = self._workflow_id(wms_workflow_id)
            client = self.client()
            name = client.get_workflow(wid)["name"]
            reply = client.retry_workflow(wid)
        except (ClientError, PandaflowBpsError) as exc:
            return None, None, str(exc)
        if not reply.get("changed"):
            return None, None, f"run {wid} has no failed or cancelled job to restart"
        return str(wid), name, ""


def _epoch(iso: str | None) -> float:
    from datetime import datetime

    if not iso:
        return 0.0
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _runs_index() -> Path:
    return pf_config.home() / "bps-runs.json"


def _remember(url: str, workflow_id: int, submit_path: str) -> None:
    """Note where a run's submit directory is, so ``bps report`` can show it (best effort)."""
    path = _runs_index()
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        runs = {}
    runs[f"{url}#{workflow_id}"] = str(Path(submit_path).resolve())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(runs))
    except OSError as exc:
        _LOG.debug("cannot write %s: %s", path, exc)


def _recalled(url: str, workflow_id: int) -> str | None:
    try:
        return json.loads(_runs_index().read_text()).get(f"{url}#{workflow_id}")
    except (OSError, ValueError):
        return None
