"""With no server configured, ``bps submit`` starts a local server and pilot in the background
(pandaflow.bps.local) that later commands from other processes find and reuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

bps = pytest.importorskip("lsst.ctrl.bps")
gw_test_utils = pytest.importorskip("lsst.ctrl.bps.tests.gw_test_utils")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from lsst.ctrl.bps import BpsConfig, WmsStates  # noqa: E402
from pfharness import gone, wait_until  # noqa: E402
from test_bps_server import runnable  # noqa: E402

from pandaflow.bps import PandaflowService, local  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty PANDAFLOW_HOME, nothing configured; whatever the test started is killed after."""
    home = tmp_path / "home"
    monkeypatch.setenv("PANDAFLOW_HOME", str(home))
    monkeypatch.delenv("PANDAFLOW_SERVER", raising=False)
    monkeypatch.delenv("PANDAFLOW_TOKEN", raising=False)
    yield home
    try:
        state = json.loads((home / "bps-local.json").read_text())
    except (OSError, ValueError):
        return
    procs = []
    for key in ("pilot_pid", "server_pid"):
        pid = state.get(key)
        if pid and psutil.pid_exists(pid):
            try:
                procs.append(psutil.Process(pid))
                os.killpg(pid, signal.SIGTERM)  # started with start_new_session: it leads its group
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
    for proc in gone(procs, timeout=10):
        proc.kill()


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
