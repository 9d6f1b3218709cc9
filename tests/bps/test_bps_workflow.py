"""GenericWorkflow -> pandaflow submission body (pandaflow.bps.workflow), with the real ctrl_bps
test workflows; no server needed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

bps = pytest.importorskip("lsst.ctrl.bps")
gw_test_utils = pytest.importorskip("lsst.ctrl.bps.tests.gw_test_utils")

from lsst.ctrl.bps import (  # noqa: E402
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowExec,
    GenericWorkflowFile,
    GenericWorkflowJob,
)

from pandaflow.bps import PandaflowService, local  # noqa: E402
from pandaflow.bps.workflow import BODY_FILE, TranslationError, to_body  # noqa: E402


def _by_name(body):
    return {j["name"]: j for j in body["jobs"]}


def test_three_labels_become_tasks_with_pipetask_init_first_and_final_job_last():
    body = to_body(gw_test_utils.make_3_label_workflow("run1", True))
    jobs = body["jobs"]
    assert body["name"] == "run1"
    assert jobs[0]["name"] == "pipetaskInit" and "parents" not in jobs[0]
    assert jobs[-1]["name"] == "finalJob"
    assert sorted(jobs[-1]["parents"]) == sorted(j["name"] for j in jobs if j["task"] == "label3")
    assert [j["task"] for j in jobs].count("label1") == 6
    assert list(dict.fromkeys(j["task"] for j in jobs)) == [
        "pipetaskInit",
        "label1",
        "label2",
        "label3",
        "finalJob",
    ]


def test_the_final_job_runs_whatever_the_outcome_and_no_other_job_does():
    jobs = to_body(gw_test_utils.make_3_label_workflow("run1", True))["jobs"]
    assert [j["name"] for j in jobs if j.get("always")] == ["finalJob"]


def test_edges_of_the_generic_graph_become_parents():
    jobs = _by_name(to_body(gw_test_utils.make_3_label_workflow("run1", False)))
    assert jobs["label1_301_10"]["parents"] == ["pipetaskInit"]
    assert jobs["label2_301_10"]["parents"] == ["label1_301_10"]
    assert jobs["label3_10002_11"]["parents"] == ["label2_10002_11"]
    assert "finalJob" not in jobs


def test_noop_jobs_are_not_submitted_and_their_children_wait_for_their_parents():
    jobs = _by_name(to_body(gw_test_utils.make_3_label_workflow_noop_sort("run1", True)))
    assert not any(name.startswith("noop_") for name in jobs)
    # label1 of visit 10001 waits (through noop_order1_301) for label2 of visit 301
    assert set(jobs["label1_10001_10"]["parents"]) == {"pipetaskInit", "label2_301_10", "label2_301_11"}


def test_groups_are_flattened_around_their_first_and_last_jobs():
    jobs = _by_name(to_body(gw_test_utils.make_3_label_workflow_groups_sort("run1", True)))
    assert not any(name.startswith("group_") for name in jobs)
    assert jobs["label2_301_10"]["parents"] == ["label1_301_10"]
    assert set(jobs["label3_301_10"]["parents"]) == {"label2_301_10", "label2_301_11"}
    # the group of visit 10001 follows the group of visit 301
    assert set(jobs["label1_10001_10"]["parents"]) == {"pipetaskInit", "label2_301_10", "label2_301_11"}


def test_five_label_workflows_translate_with_every_job():
    gwf = gw_test_utils.make_5_label_workflow("run5", True, True, True)
    body = to_body(gwf)
    assert len(body["jobs"]) == sum(1 for _ in gwf) + 1


def _one_job_workflow(**fields) -> tuple[GenericWorkflow, GenericWorkflowJob]:
    gwf = GenericWorkflow("one")
    job = GenericWorkflowJob("job1", label="calibrate", executable=GenericWorkflowExec("exe", "/bin/echo"))
    for key, value in fields.items():
        setattr(job, key, value)
    gwf.add_job(job)
    return gwf, job


def test_command_line_resolves_cmdvals_env_and_file_symbols():
    gwf, job = _one_job_workflow(
        arguments="-b <FILE:butlerConfig> --qgraph <FILE:runQgraphFile> -j {numProc} --home <ENV:HOME>",
        cmdvals={"numProc": 4},
    )
    gwf.add_job_inputs(
        "job1",
        [
            GenericWorkflowFile("butlerConfig", src_uri="<ENV:REPO_ROOT>/butler.yaml"),
            GenericWorkflowFile("runQgraphFile", src_uri="/submit/run.qg"),
        ],
    )
    command = to_body(gwf)["jobs"][0]["command"]
    assert command == "/bin/echo -b ${REPO_ROOT}/butler.yaml --qgraph /submit/run.qg -j 4 --home ${HOME}"


def test_a_placeholder_missing_from_cmdvals_is_an_error_naming_the_job():
    gwf, _ = _one_job_workflow(arguments="-j {numProc}")
    with pytest.raises(TranslationError, match=r"job1.*numProc"):
        to_body(gwf)


def test_memory_and_retry_settings_map_to_pandaflow_fields():
    gwf, _ = _one_job_workflow(
        request_memory=2048, memory_multiplier=2.0, request_memory_max=8192, number_of_retries=5,
        retry_unless_exit=[1, 2], request_cpus=2, request_walltime="90", priority="10",
        environment={"OMP_NUM_THREADS": "1", "DATA": "<ENV:HOME>/data"},
    )  # fmt: skip
    job = to_body(gwf)["jobs"][0]
    assert job["memory_mb"] == 2048
    assert job["memory_multiplier"] == 2.0
    assert job["memory_max_mb"] == 8192
    assert job["max_attempts"] == 6  # the first attempt plus numberOfRetries
    assert job["retry_unless_exit"] == [1, 2]
    assert job["cores"] == 2 and job["walltime_s"] == 5400 and job["priority"] == 10
    assert job["env"] == {"OMP_NUM_THREADS": "1"}


def test_environment_values_naming_variables_are_exported_by_the_job_shell_which_expands_them():
    gwf, _ = _one_job_workflow(
        arguments="run", environment={"OMP_NUM_THREADS": "1", "PATH": "/opt/stack/bin:<ENV:PATH>",
                                      "NOTE": 'say "hi" `now`'},
    )  # fmt: skip
    job = to_body(gwf)["jobs"][0]
    assert job["env"] == {"OMP_NUM_THREADS": "1", "NOTE": 'say "hi" `now`'}  # set verbatim by the pilot
    assert job["command"] == 'export PATH="/opt/stack/bin:${PATH}"; /bin/echo run'


def test_exports_come_before_the_pre_command_line():
    gwf, _ = _one_job_workflow(arguments="run", pre_cmdline="setup.sh", environment={"D": "<ENV:HOME>/d"})
    assert to_body(gwf)["jobs"][0]["command"] == 'export D="${HOME}/d"; setup.sh && /bin/echo run'


def test_a_single_retry_unless_exit_code_becomes_a_list_and_no_multiplier_means_no_growth():
    gwf, _ = _one_job_workflow(request_memory=1000, memory_multiplier=None, retry_unless_exit=2)
    job = to_body(gwf)["jobs"][0]
    assert job["retry_unless_exit"] == [2]
    assert "memory_multiplier" not in job and "memory_max_mb" not in job


def test_prepare_writes_the_submission_body_to_the_submit_directory(tmp_path):
    config = BpsConfig({"operator": "ann"})
    gwf = gw_test_utils.make_3_label_workflow("run1", True)
    workflow = PandaflowService(config).prepare(config, gwf, str(tmp_path))
    written = json.loads((tmp_path / BODY_FILE).read_text())
    assert written == workflow.body
    assert written["owner"] == "ann" and len(written["jobs"]) == 20
    assert workflow.run_id is None


def test_local_runs_cap_cores_at_the_local_pilot():
    body = {"name": "r", "jobs": [{"name": "a", "cores": 16}, {"name": "b"}]}
    assert [j.get("cores") for j in local.fit_run(body, 2, {"PATH": "/bin"})["jobs"]] == [2, 1]


def test_local_jobs_carry_the_submitting_shells_path_and_the_variables_they_name():
    body = {"name": "r", "jobs": [
        {"name": "a", "command": "pipetask run-qbb ${REPO} g.qg"},
        {"name": "b", "command": "pipetask run-qbb ${REPO} g.qg", "env": {"REPO": "/mine", "PATH": "/b"}},
        {"name": "c", "command": 'export D="${HOME}/d"; ls ${D}'},
    ]}  # fmt: skip
    environ = {"PATH": f"/usr/bin:{local.search_path({})}", "REPO": "/repo", "HOME": "/home/ann", "X": "1"}
    jobs = local.fit_run(body, 2, environ)["jobs"]
    assert jobs[0]["env"] == {"PATH": environ["PATH"], "REPO": "/repo"}
    assert jobs[1]["env"] == {"PATH": "/b", "REPO": "/mine"}  # the job's own environment wins
    assert jobs[2]["env"] == {"PATH": environ["PATH"], "HOME": "/home/ann"}  # D is the job's own export
    assert "env" not in body["jobs"][0]  # the translated body is left as it is


def test_a_variable_missing_from_the_submitting_shell_is_named_in_a_warning(caplog):
    job = {"name": "a", "task": "task0", "command": "pipetask run-qbb ${NO_SUCH_REPO} g.qg"}
    jobs = local.fit_run({"name": "r", "jobs": [job, {**job, "name": "b"}]}, 1, {"PATH": "/usr/bin"})["jobs"]
    assert "NO_SUCH_REPO" not in jobs[0]["env"]
    assert "jobs (2 of task0) use ${NO_SUCH_REPO}" in caplog.text
    assert "export NO_SUCH_REPO before bps submit" in caplog.text


def test_the_local_path_ends_with_the_scripts_directory_of_this_python_when_it_lacks_it():
    scripts = str(Path(sys.executable).parent)
    assert local.search_path({"PATH": "/usr/bin:/bin"}).split(os.pathsep) == ["/usr/bin", "/bin", scripts]
    assert local.search_path({"PATH": f"{scripts}:/usr/bin"}) == f"{scripts}:/usr/bin"


def test_the_final_job_asks_at_most_the_cpus_of_this_machine_unless_the_submit_yaml_says():
    from lsst.ctrl.bps.bps_config import BPS_DEFAULTS

    service = {"wmsServiceClass": "pandaflow.bps.PandaflowService"}
    config = BpsConfig(service, defaults=BPS_DEFAULTS)
    cpus = min(16, local.local_cores())
    assert config["finalJob"]["requestCpus"] == cpus
    assert f"aggregate-graph -j {cpus} " in " ".join(config["finalJob"]["command1"].split())
    overridden = BpsConfig({**service, "finalJob": {"requestCpus": 32}}, defaults=BPS_DEFAULTS)
    assert overridden["finalJob"]["requestCpus"] == 32


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No server configured and none running: an empty PANDAFLOW_HOME."""
    monkeypatch.setenv("PANDAFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PANDAFLOW_SERVER", raising=False)
    monkeypatch.delenv("PANDAFLOW_TOKEN", raising=False)
    return tmp_path


def test_with_an_empty_config_and_no_server_report_and_status_explain_and_start_nothing(nowhere):
    service = PandaflowService({})
    reports, message = service.report("7")
    assert reports == [] and "no pandaflow server known" in message
    state, message = service.get_status("7")
    assert state == bps.WmsStates.UNKNOWN and "bps submit starts a local server" in message
    assert service.cancel("7")[0] is False
    assert service.restart("7")[0] is None
    assert service.ping(None)[0] == 0
    assert not (nowhere / "home" / "server.json").exists()


def test_submission_checks_fail_for_a_configured_server_that_does_not_answer(nowhere):
    service = PandaflowService(BpsConfig({"pandaflowServerUrl": "http://127.0.0.1:9"}))
    with pytest.raises(RuntimeError, match="does not answer"):
        service.run_submission_checks()
