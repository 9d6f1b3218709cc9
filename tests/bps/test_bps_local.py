"""With no server configured, ``bps submit`` starts a local server and pilot in the background
(pandaflow.bps.local) that later commands from other processes find and reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

bps = pytest.importorskip("lsst.ctrl.bps")
gw_test_utils = pytest.importorskip("lsst.ctrl.bps.tests.gw_test_utils")

from lsst.ctrl.bps import BpsConfig, GenericWorkflow, GenericWorkflowJob, WmsStates  # noqa: E402
from support.bps import SH, runnable, stop_local  # noqa: E402
from support.waiting import wait_until  # noqa: E402

from pandaflow.bps import PandaflowService, local  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty PANDAFLOW_HOME, nothing configured; whatever the test started is stopped after."""
    home = tmp_path / "home"
    monkeypatch.setenv("PANDAFLOW_HOME", str(home))
    monkeypatch.delenv("PANDAFLOW_SERVER", raising=False)
    monkeypatch.delenv("PANDAFLOW_TOKEN", raising=False)
    yield home
    stop_local(home)


def test_submit_without_a_server_starts_one_that_a_later_bps_report_finds(home, tmp_path):
    config = BpsConfig({"operator": "ann", "pandaflowLocalPilotIdle": 60})
    service = PandaflowService(config)
    assert service.ping(None)[0] == 0
    workflow = service.prepare(config, runnable(gw_test_utils.make_3_label_workflow("local", True), tmp_path),
                               str(tmp_path / "submit"))  # fmt: skip
    service.submit(workflow)
    state = json.loads((home / "bps-local.json").read_text())
    assert psutil.pid_exists(state["server_pid"]) and psutil.pid_exists(state["pilot_pid"])

    # another process, as from another shell: bps builds the service with {} and finds the server
    env = dict(os.environ, BPS_WMS_SERVICE_CLASS="pandaflow.bps.PandaflowService")
    bps_cli = [sys.executable, "-c", "from lsst.ctrl.bps.cli.bps import main; main()"]

    ended = {WmsStates.SUCCEEDED, WmsStates.FAILED}
    polled = PandaflowService({})
    wait_until(lambda: polled.get_status(workflow.run_id)[0] in ended, 120, "the local run to end")
    status = subprocess.run([*bps_cli, "status", "--id", workflow.run_id], env=env, capture_output=True,
                            timeout=120)  # fmt: skip
    assert status.returncode == WmsStates.SUCCEEDED.value, status.stderr
    report = subprocess.run([*bps_cli, "report", "--id", workflow.run_id], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert "finalJob" in report.stdout and "SUCCEEDED" in report.stdout, report.stdout + report.stderr


def test_a_second_submission_reuses_the_local_server_and_its_pilot(home):
    first = local.ensure_local(idle_timeout=60)
    second = local.ensure_local(idle_timeout=60)
    assert second.url == first.url and second.pilot_pid == first.pilot_pid
    assert json.loads((home / "server.json").read_text())["url"] == first.url


ENDED = {WmsStates.SUCCEEDED, WmsStates.FAILED}


def _run_echo(arguments: str, submit_dir: Path) -> WmsStates:
    """Submit (bps submit's way, in this process) a one-job run of ``/bin/sh ARGUMENTS``; wait for its end."""
    gwf = GenericWorkflow(submit_dir.name)
    gwf.add_job(
        GenericWorkflowJob("job1", label="echo", executable=SH, arguments=arguments, number_of_retries=0)
    )
    config = BpsConfig({"operator": "ann", "pandaflowLocalPilotIdle": 60})
    service = PandaflowService(config)
    run_id = service.submit(service.prepare(config, gwf, str(submit_dir))).run_id
    polled = PandaflowService({})
    return wait_until(lambda: (s := polled.get_status(run_id)[0]) in ENDED and s, 120, f"run {run_id}")


def test_a_reused_local_pilot_runs_a_later_submissions_jobs_with_that_shells_variables(
    home, tmp_path, monkeypatch
):
    assert _run_echo("-c true", tmp_path / "first") == WmsStates.SUCCEEDED
    pilot_pid = json.loads((home / "bps-local.json").read_text())["pilot_pid"]

    # a later submission from a shell that exports a variable the pilot's environment lacks
    monkeypatch.setenv("PF_LATER", "from-the-second-shell")
    out = tmp_path / "later.txt"
    assert _run_echo(f"-c 'echo <ENV:PF_LATER> > {out}'", tmp_path / "second") == WmsStates.SUCCEEDED
    assert json.loads((home / "bps-local.json").read_text())["pilot_pid"] == pilot_pid
    assert out.read_text().strip() == "from-the-second-shell"


def test_a_later_submission_starts_a_new_local_pilot_when_the_last_one_has_exited(home, tmp_path):
    assert _run_echo("-c true", tmp_path / "first") == WmsStates.SUCCEEDED
    stop_local(home, pilot_only=True)  # as when it idled out

    assert _run_echo("-c true", tmp_path / "second") == WmsStates.SUCCEEDED
