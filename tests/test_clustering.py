"""Clustering: jobs of some tasks that share dimension values run as one payload."""

import subprocess

import pytest

from pandaflow import clustering, dagfile
from pandaflow.clustering import ClusterSpec

SINGLE_FRAME = ClusterSpec("singleFrame", ("isr", "calibrate"), ("visit", "detector"))


def chain(visit, detector, **extra):
    v = {"visit": visit, "detector": detector}
    isr = {"name": f"isr-{visit}-{detector}", "task": "isr", "command": f"echo isr {visit} {detector}",
           "inputs": [f"raw-{visit}-{detector}"], "outputs": [f"post-{visit}-{detector}"], "memory_mb": 1000,
           "walltime_s": 60, **extra}  # fmt: skip
    cal = {"name": f"cal-{visit}-{detector}", "task": "calibrate", "command": f"echo cal {visit} {detector}",
           "inputs": [f"post-{visit}-{detector}", "refcat"], "outputs": [f"calexp-{visit}-{detector}"],
           "memory_mb": 3000, "walltime_s": 120, "cores": 2}  # fmt: skip
    return [cal, isr], [v, v]  # consumer first: the order inside a cluster comes from the graph


def test_a_chain_becomes_one_job_named_by_label_and_dimensions():
    jobs, variables = chain(1, 10)
    out, problems = clustering.apply(jobs, variables, [SINGLE_FRAME])
    assert problems == []
    assert [j["name"] for j in out] == ["singleFrame_1_10"]
    job = out[0]
    assert job["task"] == "singleFrame"
    assert job["inputs"] == ["raw-1-10", "refcat"]  # what the members read from outside
    assert job["outputs"] == ["post-1-10", "calexp-1-10"]  # every member's outputs
    assert (job["memory_mb"], job["cores"], job["walltime_s"]) == (3000, 2, 180)


def test_members_run_in_dependency_order_and_the_log_names_each_step():
    jobs, variables = chain(1, 10)
    job = clustering.apply(jobs, variables, [SINGLE_FRAME])[0][0]
    run = subprocess.run(["bash", "-c", job["command"]], capture_output=True, text=True)
    assert run.returncode == 0
    assert run.stdout.splitlines() == [
        "[pandaflow] step 1/2: isr-1-10", "isr 1 10", "[pandaflow] step 2/2: cal-1-10", "cal 1 10",
    ]  # fmt: skip


def test_a_failing_member_stops_the_cluster_with_its_exit_code():
    first = {"name": "a", "task": "isr", "command": "echo a; exit 7"}
    second = {"name": "b", "task": "calibrate", "command": "echo b", "parents": ["a"]}
    v = {"visit": 1, "detector": 2}
    job = clustering.apply([first, second], [v, v], [SINGLE_FRAME])[0][0]
    run = subprocess.run(["bash", "-c", job["command"]], capture_output=True, text=True)
    assert run.returncode == 7
    assert "b" not in run.stdout.split()
    assert "[pandaflow] step 1/2: a failed with exit code 7" in run.stderr


def test_each_member_keeps_its_own_environment_and_directory():
    a = {"name": "a", "task": "isr", "command": 'cd /; echo "$X"', "env": {"X": "it's a"}}
    b = {"name": "b", "task": "calibrate", "command": 'echo "${X:-unset}" "$PWD"', "parents": ["a"]}
    v = {"visit": 1, "detector": 2}
    job = clustering.apply([a, b], [v, v], [SINGLE_FRAME])[0][0]
    run = subprocess.run(["bash", "-c", job["command"]], capture_output=True, text=True, cwd="/tmp")
    assert run.stdout.splitlines()[1] == "it's a"
    assert run.stdout.splitlines()[3] == "unset /tmp"


def test_jobs_outside_clusters_wait_for_the_cluster_of_their_parents():
    jobs, variables = chain(1, 10)
    merge = {"name": "merge", "task": "merge", "command": "true", "parents": ["cal-1-10", "isr-1-10"]}
    out, _ = clustering.apply([*jobs, merge], [*variables, {}], [SINGLE_FRAME])
    assert out[1]["parents"] == ["singleFrame_1_10"]


def test_chains_of_different_dimension_values_are_different_clusters():
    a, va = chain(1, 10)
    b, vb = chain(1, 11)
    out, _ = clustering.apply([*a, *b], [*va, *vb], [SINGLE_FRAME])
    assert [j["name"] for j in out] == ["singleFrame_1_10", "singleFrame_1_11"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"always": True}, "runs 'always' and cannot be part of cluster"),
        ({"queue": "himem"}, "ask for different queues"),
        ({"env": {"NOT-A-NAME": "x"}}, "cannot be exported by a shell"),
    ],
)
def test_clusters_that_cannot_run_as_one_payload_are_refused(change, message):
    jobs, variables = chain(1, 10)
    jobs[1].update(change)
    if "queue" in change:
        jobs[0]["queue"] = "small"
    out, problems = clustering.apply(jobs, variables, [SINGLE_FRAME])
    assert out is jobs and any(message in p for p in problems)


def test_a_clustered_job_without_the_dimension_is_refused_naming_it():
    jobs, variables = chain(1, 10)
    _, problems = clustering.apply(jobs, [{"visit": 1}, {"visit": 1}], [SINGLE_FRAME])
    assert any("'cal-1-10'" in p and "['detector']" in p for p in problems)


# ---------------------------------------------------------------- DAG files


def doc(**clusters):
    return {
        "name": "w",
        "available": ["raw-1", "raw-2"],
        "tasks": {"isr": {"command": "echo isr {visit}"}, "cal": {"command": "echo cal {visit}"},
                  "merge": {"command": "echo merge"}},  # fmt: skip
        "clusters": clusters,
        "jobs": [
            *({"name": f"isr-{v}", "task": "isr", "vars": {"visit": v}, "inputs": [f"raw-{v}"],
               "outputs": [f"p-{v}"]} for v in (1, 2)),
            *({"name": f"cal-{v}", "task": "cal", "vars": {"visit": v}, "inputs": [f"p-{v}"],
               "outputs": [f"c-{v}"]} for v in (1, 2)),
            {"name": "merge", "task": "merge", "inputs": ["c-1", "c-2"]},
        ],  # fmt: skip
    }


def test_a_dag_file_clusters_by_its_clusters_section():
    dag = dagfile.parse(doc(visit={"tasks": ["isr", "cal"], "dimensions": ["visit"]}))
    assert [j["name"] for j in dag.jobs] == ["visit_1", "visit_2", "merge"]
    assert dag.labels == {"visit": 2, "merge": 1}
    assert dag.clustered == {"visit": 4}
    assert dag.roots() == ["visit_1", "visit_2"]


@pytest.mark.parametrize(
    "clusters,message",
    [
        ({"x": {"tasks": ["nope"]}}, "clusters.x.tasks: unknown task 'nope'"),
        ({"x": {"tasks": ["isr"]}, "y": {"tasks": ["isr"]}}, "task 'isr' is already in cluster 'x'"),
        ({"x": {"tasks": ["isr"], "dimensions": ["no such"]}}, "clusters.x.dimensions: expected a list"),
        ({"x": {"tasks": ["isr"], "colour": 1}}, "clusters.x.colour: unknown key"),
        ({"merge": {"tasks": ["isr"]}}, "is the name of another task"),
        ({"x": {"tasks": ["isr"], "dimensions": ["detector"]}}, "no value for ['detector']"),
    ],
)
def test_bad_cluster_sections_are_refused_naming_the_key(clusters, message):
    with pytest.raises(dagfile.DagFileError) as err:
        dagfile.parse(doc(**clusters), "dag.yaml")
    assert any(message in p for p in err.value.problems), err.value.problems


def test_clusters_that_make_a_cycle_are_refused_naming_the_clusters():
    d = doc(all={"tasks": ["isr", "merge"]})  # merge reads what cal writes, cal reads what isr writes
    with pytest.raises(dagfile.DagFileError) as err:
        dagfile.parse(d, "dag.yaml")
    assert "after clustering" in str(err.value) and "cycle" in str(err.value)
