"""A real quantum graph through the real ``bps`` command on pandaflow, with nothing configured.

A throwaway butler repository (SQLite registry, file datastore) holds ``add_dataset0`` for three
detectors; ``lsst.pipe.base.tests.simpleQGraph`` makes the quantum graph of three chained
``AddTask`` tasks (``task0`` reads ``add_dataset0`` and writes ``add_dataset1`` and
``add2_dataset1``, ``task1`` reads ``add_dataset1``, ...), saved in the ``.qg`` format. ``bps
submit`` (the venv's console script, in a subprocess) takes it as ``qgraphFile`` with bps's
default quantum-backed butler flow: ``pipetaskInit`` runs ``pipetask pre-exec-init-qbb``, each
quantum ``pipetask run-qbb``, and ``finalJob`` ``butler aggregate-graph``, which brings the
outputs into the repository and chains the output collection. With no server configured the
plugin starts the local server and pilot under a temporary PANDAFLOW_HOME; every run of the
module shares them (later submissions reuse them, as from a user's shell), and they are stopped
at the end.

The runs use the shipped ``configs/bps/qgraph-local.yaml``, which names the repository and the
graph as ``${REPO}`` and ``${QGRAPH}``: bps expands the graph's path at submission and turns the
repository into ``<ENV:REPO>`` in the jobs' command lines, which the pilot's shell expands.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lsst.ctrl.bps")
pytest.importorskip("lsst.pipe.base.tests.simpleQGraph")

import numpy  # noqa: E402
from lsst.ctrl.bps import WmsStates  # noqa: E402
from lsst.daf.butler import Butler  # noqa: E402
from lsst.pipe.base.tests.simpleQGraph import (  # noqa: E402
    makeSimpleButler,
    makeSimplePipeline,
    makeSimpleQGraph,
    populateButler,
)
from support.bps import bps, bps_env, report_table, stop_local  # noqa: E402
from support.waiting import wait_until  # noqa: E402

from pandaflow.bps import PandaflowService  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SUBMIT_YAML = Path(__file__).resolve().parents[2] / "configs" / "bps" / "qgraph-local.yaml"
DETECTORS = (0, 1, 2)
TASKS = 3
INPUTS = "inputs"  # the RUN collection holding add_dataset0
OPERATOR = "ann"
ENDED = {WmsStates.SUCCEEDED, WmsStates.FAILED, WmsStates.DELETED}


def _input(detector: int) -> numpy.ndarray:
    return numpy.array([0.0, 1.0, 2.0, 5.0]) + 10 * detector


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A butler repository with ``add_dataset0`` for every detector in the ``inputs`` run."""
    root = tmp_path_factory.mktemp("repo")
    butler = makeSimpleButler(str(root), run=INPUTS, inMemory=False)
    try:
        populateButler(makeSimplePipeline(TASKS), butler)  # instrument INSTR, detector 0
        for detector in DETECTORS[1:]:
            butler.registry.insertDimensionData(
                "detector", {"instrument": "INSTR", "id": detector, "full_name": f"det{detector}"}
            )
            butler.put(_input(detector), "add_dataset0", run=INPUTS, instrument="INSTR", detector=detector)
    finally:
        butler.close()
    return root


def make_qgraph(repo: Path, payload: str, suffix: str = ".qg") -> Path:
    """The quantum graph of the AddTask pipeline over every detector, in ``repo/<payload><suffix>``
    (``.qgraph`` for the old format).

    Its output collection is the one bps names (``u/{operator}/{payloadName}``), so ``finalJob``
    chains the run into it. The graph carries the inputs' datastore records (as ``pipetask qgraph
    --qgraph-datastore-records`` does): ``run-qbb`` has no registry to find them in. The output
    run is a placeholder that ``bps submit`` replaces with its timestamped ``outputRun``; it must
    differ from the inputs' run, which bps would rename too.
    """
    butler = Butler.from_config(str(repo), collections=[INPUTS], writeable=False)
    try:
        _, qgraph = makeSimpleQGraph(
            pipeline=makeSimplePipeline(TASKS), butler=butler, callPopulateButler=False,
            run=f"u/{OPERATOR}/{payload}/graph", makeDatastoreRecords=True,
            metadata={"input": [INPUTS], "output": f"u/{OPERATOR}/{payload}"},
        )  # fmt: skip
    finally:
        butler.close()
    assert len(qgraph) == TASKS * len(DETECTORS)
    path = repo / f"{payload}{suffix}"
    qgraph.saveUri(str(path))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """PANDAFLOW_HOME of the module's runs; the local server and pilot are stopped at the end."""
    home = tmp_path_factory.mktemp("pandaflow-home")
    with pytest.MonkeyPatch.context() as mp:  # for PandaflowService in this process
        mp.setenv("PANDAFLOW_HOME", str(home))
        mp.delenv("PANDAFLOW_SERVER", raising=False)
        mp.delenv("PANDAFLOW_TOKEN", raising=False)
        try:
            yield home
        finally:
            stop_local(home)


def bps_submit(
    repo: Path, home: Path, workdir: Path, payload: str, extra_yaml: str = "", suffix: str = ".qg"
) -> subprocess.CompletedProcess:
    """``bps submit`` of a fresh quantum graph of ``repo``: the shipped submit yaml, included by one
    in ``workdir`` that names the payload (hence the output collection) and the submit directory."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "submit.yaml"
    config.write_text(
        textwrap.dedent(f"""\
            includeConfigs:
              - {SUBMIT_YAML}
            operator: {OPERATOR}
            submitPath: {workdir}/submit/{{outputRun}}
            pandaflowLocalPilotIdle: 300
            payload:
              payloadName: {payload}
            """)
        + textwrap.dedent(extra_yaml)
    )
    env = bps_env(home, REPO=str(repo), QGRAPH=str(make_qgraph(repo, payload, suffix)))
    return bps(env, "submit", str(config), cwd=workdir)


def submit(repo: Path, home: Path, workdir: Path, payload: str, extra_yaml: str = "") -> str:
    """``bps submit`` of a fresh quantum graph of ``repo``; returns the Run Id."""
    done = bps_submit(repo, home, workdir, payload, extra_yaml)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"^Run Id: (\d+)$", done.stdout, re.MULTILINE).group(1)


def wait_for_end(run_id: str) -> WmsStates:
    service = PandaflowService({})  # as bps builds it for status and report
    return wait_until(lambda: (s := service.get_status(run_id)[0]) in ENDED and s, 300, f"run {run_id}")


def succeeded_per_label(run_id: str) -> dict[str, int]:
    [report], message = PandaflowService({}).report(run_id)
    assert message == ""
    return {label: counts[WmsStates.SUCCEEDED] for label, counts in report.job_summary.items()}


def outputs(repo: Path, collection: str, dataset_type: str) -> dict[int, list[float]]:
    """``{detector: values}`` of a dataset type found through ``collection``."""
    butler = Butler.from_config(str(repo), collections=[collection])
    try:
        refs = butler.query_datasets(dataset_type, find_first=True, explain=False)
        return {ref.dataId["detector"]: butler.get(ref).tolist() for ref in refs}
    finally:
        butler.close()


# ------------------------------------------------------------------------------------ one plain run


@pytest.fixture(scope="module")
def plain(repo, home, tmp_path_factory) -> str:
    """A run of the graph with one job per quantum (bps's default clustering), ended."""
    run_id = submit(repo, home, tmp_path_factory.mktemp("plain"), "plain")
    wait_for_end(run_id)
    return run_id


def test_every_job_of_a_real_graph_succeeds_with_one_job_per_quantum(plain):
    expected = {"pipetaskInit": 1, "task0": 3, "task1": 3, "task2": 3, "finalJob": 1}
    assert succeeded_per_label(plain) == expected
    [report], _ = PandaflowService({}).report(plain)
    assert report.state == WmsStates.SUCCEEDED and report.total_number_jobs == 11


def test_the_outputs_of_every_task_are_in_the_butler_under_the_output_collection(plain, repo):
    for level in range(1, TASKS + 1):
        expected = {d: (_input(d) + 3 * level).tolist() for d in DETECTORS}  # each AddTask adds 3
        assert outputs(repo, f"u/{OPERATOR}/plain", f"add_dataset{level}") == expected
        assert outputs(repo, f"u/{OPERATOR}/plain", f"add2_dataset{level}") == {
            d: [v + 3 for v in values] for d, values in expected.items()
        }


def test_bps_report_prints_the_per_label_table(plain, home):
    done = bps(bps_env(home), "report", "--id", plain)
    assert done.returncode == 0, done.stderr
    table = report_table(done.stdout)
    assert list(table) == ["TOTAL", "pipetaskInit", "task0", "task1", "task2", "finalJob"]
    assert {label: row["SUCCEEDED"] for label, row in table.items()} == {
        "TOTAL": 11, "pipetaskInit": 1, "task0": 3, "task1": 3, "task2": 3, "finalJob": 1,
    }  # fmt: skip
    assert all(row["SUCCEEDED"] == row["EXPECTED"] for row in table.values())


def test_bps_status_exits_with_the_succeeded_state(plain, home):
    assert bps(bps_env(home), "status", "--id", plain).returncode == WmsStates.SUCCEEDED.value


# ------------------------------------------------------------------------------------ clustering


def test_a_clustered_graph_runs_one_job_per_cluster_under_the_cluster_label(repo, home, tmp_path):
    run_id = submit(repo, home, tmp_path, "clustered", """\
        clusterAlgorithm: lsst.ctrl.bps.quantum_clustering_funcs.dimension_clustering
        cluster:
          firstTwo:
            pipetasks: task0, task1
            dimensions: detector
        """)  # fmt: skip
    assert wait_for_end(run_id) == WmsStates.SUCCEEDED
    # one job per detector runs task0 then task1; task2 keeps one job per quantum
    assert succeeded_per_label(run_id) == {"pipetaskInit": 1, "firstTwo": 3, "task2": 3, "finalJob": 1}
    assert outputs(repo, f"u/{OPERATOR}/clustered", "add_dataset3") == {
        d: (_input(d) + 9).tolist() for d in DETECTORS
    }


# ------------------------------------------------------------------------------------ cancel


def test_bps_cancel_stops_a_running_run_and_its_jobs_are_deleted(repo, home, tmp_path):
    # task0's jobs sleep first, so the run is surely still going when it is cancelled
    run_id = submit(repo, home, tmp_path, "cancelled", """\
        pipetask:
          task0:
            runQuantumCommand: >-
              sleep 300 && pipetask {runPreCmdOpts} run-qbb {butlerConfig} {qgraphFile}
              --qgraph-node-id {qgraphNodeId}
        """)  # fmt: skip
    service = PandaflowService({})
    wait_until(lambda: service.report(run_id)[0][0].job_summary["task0"][WmsStates.RUNNING] > 0, 120,
               "a task0 job to run")  # fmt: skip
    env = bps_env(home)
    done = bps(env, "cancel", "--id", run_id)
    assert done.returncode == 0 and "Successfully canceled" in done.stdout + done.stderr, done.stderr

    assert wait_for_end(run_id) == WmsStates.FAILED  # pipetaskInit had succeeded: not all DELETED
    table = report_table(bps(env, "report", "--id", run_id).stdout)
    assert table["pipetaskInit"]["SUCCEEDED"] == 1
    assert table["task0"]["DELETED"] == 3
    assert table["finalJob"]["SUCCEEDED"] == 0 and table["TOTAL"]["RUNNING"] == 0
    assert bps(env, "status", "--id", run_id).returncode == WmsStates.FAILED.value


# ------------------------------------------------------------------------------------ refused


def test_an_old_format_graph_is_refused_since_the_final_job_could_never_end(repo, home, tmp_path):
    done = bps_submit(repo, home, tmp_path, "old", suffix=".qgraph")
    assert done.returncode != 0
    assert "cannot read the quantum graph" in done.stderr and "in the .qg format" in done.stderr, done.stderr
    assert "Run Id" not in done.stdout
