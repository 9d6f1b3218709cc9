"""PandaflowService against a real pandaflow server with a real local pilot running the jobs.

The ctrl_bps test workflows run with every job's executable swapped for a harmless ``/bin/sh -c``
that appends the job's label to a log (:func:`support.bps.runnable`), so the run order can be
read back afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

bps = pytest.importorskip("lsst.ctrl.bps")
gw_test_utils = pytest.importorskip("lsst.ctrl.bps.tests.gw_test_utils")

from lsst.ctrl.bps import (  # noqa: E402
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowJob,
    WmsStates,
)
from support.bps import SH, runnable  # noqa: E402
from support.processes import PilotProcess, ServerProcess  # noqa: E402
from support.waiting import wait_until  # noqa: E402

from pandaflow.bps import PandaflowService  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A pandaflow server and one 2-slot pilot; PANDAFLOW_SERVER / _TOKEN / _HOME point at them."""
    workdir = tmp_path_factory.mktemp("bps-server")
    token = "bps-test-token"
    srv = ServerProcess(f"sqlite:///{workdir / 'pf.db'}", workdir, token).start()
    pilot = PilotProcess(srv.zmq_endpoint, token, workdir, cores=2).start()
    saved = {k: os.environ.get(k) for k in ("PANDAFLOW_SERVER", "PANDAFLOW_TOKEN", "PANDAFLOW_HOME")}
    os.environ.update(PANDAFLOW_SERVER=srv.url, PANDAFLOW_TOKEN=token, PANDAFLOW_HOME=str(workdir / "home"))
    try:
        yield srv
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        pilot.stop()
        srv.stop()


def _submit(gwf, tmp_path: Path, config: dict | None = None):
    config = BpsConfig({"operator": "ann", **(config or {})})
    service = PandaflowService(config)
    service.run_submission_checks()
    workflow = service.prepare(config, gwf, str(tmp_path / "submit"))
    service.submit(workflow)
    return workflow


def _wait_state(run_id: str, states: set[WmsStates], timeout: float = 120.0) -> WmsStates:
    service = PandaflowService({})  # as bps builds it for status and report
    return wait_until(lambda: (s := service.get_status(run_id)[0]) in states and s, timeout, f"run {run_id}")


def test_a_three_label_run_succeeds_with_init_first_and_final_job_last(server, tmp_path):
    gwf = runnable(gw_test_utils.make_3_label_workflow("three-labels", True), tmp_path)
    workflow = _submit(gwf, tmp_path)
    assert workflow.run_id and workflow.run_id.isdigit()
    assert _wait_state(workflow.run_id, {WmsStates.SUCCEEDED, WmsStates.FAILED}) == WmsStates.SUCCEEDED

    order = (tmp_path / "order.log").read_text().split()
    assert order[0] == "pipetaskInit" and order[-1] == "finalJob" and len(order) == 20

    [report], message = PandaflowService({}).report(workflow.run_id)
    assert message == ""
    assert report.state == WmsStates.SUCCEEDED and report.total_number_jobs == 20
    assert report.operator == "ann" and report.run == "three-labels"
    assert report.path == str((tmp_path / "submit").resolve())
    assert {label: c[WmsStates.SUCCEEDED] for label, c in report.job_summary.items()} == {
        "pipetaskInit": 1, "label1": 6, "label2": 6, "label3": 6, "finalJob": 1,
    }  # fmt: skip
    assert all(codes == [] for codes in report.exit_code_summary.values())


def test_a_failed_label_prunes_downstream_reports_exit_codes_and_restart_completes_the_run(server, tmp_path):
    flag = tmp_path / "fixed"
    gwf = runnable(
        gw_test_utils.make_3_label_workflow("with-failures", True), tmp_path, {"label2": str(flag)}
    )
    run_id = _submit(gwf, tmp_path).run_id
    assert _wait_state(run_id, {WmsStates.SUCCEEDED, WmsStates.FAILED}) == WmsStates.FAILED

    [report], _ = PandaflowService({}).report(run_id, return_exit_codes=True)
    assert report.job_summary["label1"][WmsStates.SUCCEEDED] == 6
    assert report.job_summary["label2"][WmsStates.FAILED] == 6
    assert report.job_summary["label3"][WmsStates.PRUNED] == 6
    # finalJob (whenRun: ALWAYS) runs after the failures, as it would on HTCondor
    assert report.job_summary["finalJob"][WmsStates.SUCCEEDED] == 1
    assert (tmp_path / "order.log").read_text().split()[-1] == "finalJob"
    assert report.exit_code_summary["label2"] == [1] * 6

    flag.touch()
    new_id, name, message = PandaflowService({}).restart(run_id)
    assert (new_id, name, message) == (run_id, "with-failures", "")
    # the retried label2 succeeds, what it had pruned (label3) runs after it, then finalJob again
    assert _wait_state(run_id, {WmsStates.SUCCEEDED}) == WmsStates.SUCCEEDED
    order = (tmp_path / "order.log").read_text().split()
    assert order[-1] == "finalJob" and order.count("finalJob") == 2 and order.count("label3") == 6
    [report], _ = PandaflowService({}).report(run_id)
    assert {label: c[WmsStates.SUCCEEDED] for label, c in report.job_summary.items()} == {
        "pipetaskInit": 1, "label1": 6, "label2": 6, "label3": 6, "finalJob": 1,
    }  # fmt: skip


def test_cancel_deletes_what_has_not_ended(server, tmp_path):
    gwf = runnable(gw_test_utils.make_3_label_workflow("to-cancel", True), tmp_path, sleep=30)
    run_id = _submit(gwf, tmp_path).run_id
    service = PandaflowService({})
    wait_until(lambda: service.report(run_id)[0][0].job_summary["label1"][WmsStates.RUNNING] > 0, 60,
               "a label1 job to run")  # fmt: skip
    assert service.list_submitted_jobs(wms_id=run_id) == [run_id]
    assert run_id in service.list_submitted_jobs(user="ann")
    ok, message = service.cancel(run_id)
    assert ok, message
    assert _wait_state(run_id, {WmsStates.DELETED, WmsStates.FAILED}) == WmsStates.FAILED  # init succeeded
    [report], _ = service.report(run_id)
    assert report.job_summary["pipetaskInit"][WmsStates.SUCCEEDED] == 1
    assert report.job_summary["label1"][WmsStates.DELETED] == 6
    assert (
        report.job_summary["finalJob"][WmsStates.PRUNED] + report.job_summary["finalJob"][WmsStates.DELETED]
        == 1
    )
    assert run_id not in service.list_submitted_jobs(user="ann")


def test_listing_shows_runs_still_going_and_recent_ones_with_hist(server, tmp_path):
    gwf = runnable(gw_test_utils.make_3_label_workflow("listed", False), tmp_path)
    run_id = _submit(gwf, tmp_path).run_id
    _wait_state(run_id, {WmsStates.SUCCEEDED})
    service = PandaflowService({})
    assert run_id not in [r.wms_id for r in service.report(user="ann")[0]]
    recent = {r.wms_id: r for r in service.report(user="ann", hist=1)[0]}
    assert recent[run_id].state == WmsStates.SUCCEEDED
    assert recent[run_id].job_state_counts[WmsStates.SUCCEEDED] == 19
    assert service.report(user="nobody", hist=1)[0] == []


def test_the_bps_cli_reports_and_gives_the_status_of_a_run(server, tmp_path):
    gwf = runnable(gw_test_utils.make_3_label_workflow("cli", True), tmp_path)
    run_id = _submit(gwf, tmp_path).run_id
    _wait_state(run_id, {WmsStates.SUCCEEDED})
    env = dict(os.environ, BPS_WMS_SERVICE_CLASS="pandaflow.bps.PandaflowService")
    bps_cli = [sys.executable, "-c", "from lsst.ctrl.bps.cli.bps import main; main()"]
    started = time.monotonic()
    report = subprocess.run([*bps_cli, "report", "--id", run_id], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert any("SUCCEEDED" in line and run_id in line for line in lines), report.stdout
    assert any(line.split()[:1] == ["label2"] and line.split()[-1] == "6" for line in lines), report.stdout
    status = subprocess.run([*bps_cli, "status", "--id", run_id], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert status.returncode == WmsStates.SUCCEEDED.value, status.stderr
    assert time.monotonic() - started < 120


def test_environment_values_naming_variables_are_expanded_on_the_pilot(server, tmp_path):
    gwf = GenericWorkflow("env-expansion")
    job = GenericWorkflowJob("job1", label="label1", executable=SH, number_of_retries=0)
    job.arguments = "-c 'echo $DATA > <ENV:BPS_TEST_OUT>/data.txt'"
    job.environment = {"BPS_TEST_OUT": str(tmp_path), "DATA": "<ENV:BPS_TEST_OUT>/sub"}
    gwf.add_job(job)
    run_id = _submit(gwf, tmp_path).run_id
    assert _wait_state(run_id, {WmsStates.SUCCEEDED, WmsStates.FAILED}) == WmsStates.SUCCEEDED
    assert (tmp_path / "data.txt").read_text().strip() == f"{tmp_path}/sub"
