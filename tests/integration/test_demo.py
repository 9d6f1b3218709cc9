"""The main job (README, ``./scripts/demo.sh``) runs to its end: python and bash apps, parsl
retries, failing commands and tasks killed for their memory (retried with more, then failing
for good), with the server's summary printed."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_demo_workflow_runs_to_its_end_and_says_what_happened(tmp_path):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_dir = str(tmp_path / "run")
    demo = [sys.executable, "-m", "pandaflow.demo", "--tasks", "20", "--bash", "5", "--run-dir", run_dir]
    done = subprocess.run(demo, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "54 app futures" in out and "'succeeded': 46, 'failed': 8" in out, out
    assert "5 x BashExitFailure" in out and "3 x TaskFailed: error 1101" in out, out
    assert "failed with error 1101: OUT_OF_MEMORY" in out, out
