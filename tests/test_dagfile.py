"""DAG files: validation with errors naming the file and the key, and expansion of task defaults."""

import json
from pathlib import Path

import pytest

from pandaflow import dagfile
from pandaflow.dagfile import DagFileError

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "dags"


def write(tmp_path, doc, name="dag.json") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def problems(tmp_path, doc, name="dag.json") -> list[str]:
    with pytest.raises(DagFileError) as caught:
        dagfile.load(write(tmp_path, doc, name))
    return caught.value.problems


def job(name="a", **fields):
    return {"name": name, "command": "true", **fields}


# ---------------------------------------------------------------- every error names the file and the key


@pytest.mark.parametrize(
    "doc, key, message",
    [
        ({"jobs": [job()]}, "name", "expected a non-empty string"),
        ({"name": "w", "jobs": []}, "jobs", "expected a non-empty list of jobs"),
        ({"name": "w", "jobs": {"a": 1}}, "jobs", "expected a non-empty list of jobs"),
        ({"name": "w", "jobs": [job()], "prio": 1}, "prio", "unknown key; allowed: name, owner"),
        ({"name": "w", "available": "raw", "jobs": [job()]}, "available", "expected a list of names"),
        (
            {"name": "w", "available": ["raw", ""], "jobs": [job()]},
            "available[1]",
            "expected a non-empty string",
        ),
        (
            {"name": "w", "jobs": [job(), job("b"), job("c"), job("d", inputs="raw")]},
            "jobs[3].inputs",
            "expected a list of names (non-empty strings of at most 500 characters), got 'raw'",
        ),
        ({"name": "w", "jobs": [job(outputs=[1])]}, "jobs[0].outputs[0]", "expected a non-empty string"),
        ({"name": "w", "jobs": [job(parents=None)]}, "jobs[0].parents", "expected a list of names"),
        ({"name": "w", "jobs": ["echo hi"]}, "jobs[0]", "expected a mapping (a job)"),
        ({"name": "w", "jobs": [{"command": "true"}]}, "jobs[0].name", "expected a non-empty string"),
        ({"name": "w", "jobs": [job(cpus=2)]}, "jobs[0].cpus", "unknown key; allowed: name, task"),
        ({"name": "w", "jobs": [job(cores=0)]}, "jobs[0].cores", "expected an integer of at least 1, got 0"),
        ({"name": "w", "jobs": [job(memory_mb="2GB")]}, "jobs[0].memory_mb", "non-negative integer, got '2"),
        ({"name": "w", "jobs": [job(max_attempts=True)]}, "jobs[0].max_attempts", "expected an integer"),
        ({"name": "w", "jobs": [job(walltime_s=-1)]}, "jobs[0].walltime_s", "positive number of seconds"),
        ({"name": "w", "jobs": [job(env={"A": ["x"]})]}, "jobs[0].env.A", "expected a string, got a list"),
        ({"name": "w", "jobs": [job(memory_multiplier=0.5)]}, "jobs[0].memory_multiplier", "from 1 to 100"),
        (
            {"name": "w", "jobs": [job(retry_unless_exit=3)]},
            "jobs[0].retry_unless_exit",
            "list of exit codes",
        ),
        ({"name": "w", "jobs": [job(vars=[1])]}, "jobs[0].vars", "mapping of identifiers"),
        ({"name": "w", "jobs": [{"name": "a"}]}, "jobs[0].command", "give the job a command"),
        ({"name": "w", "jobs": [job(task="x", label="y")]}, "jobs[0].label", "not both"),
        ({"name": "w", "tasks": [], "jobs": [job()]}, "tasks", "expected a mapping of task (label) names"),
        (
            {"name": "w", "tasks": {"isr": {"mem": 1}}, "jobs": [job(task="isr")]},
            "tasks.isr.mem",
            "unknown key",
        ),
        (
            {"name": "w", "tasks": {"isr": {"priority": 1.5}}, "jobs": [job(task="isr")]},
            "tasks.isr.priority",
            "expected an integer",
        ),
        (
            {"name": "w", "tasks": {"isr": {}}, "jobs": [job(task="isrr")]},
            "jobs[0].task",
            "unknown task 'isrr'; tasks declared: isr",
        ),
        (
            {"name": "w", "jobs": [job(command="run {visit}")]},
            "jobs[0].command",
            "unknown placeholder {visit}",
        ),
        (
            {
                "name": "w",
                "tasks": {"isr": {"command": "run {visit}"}},
                "jobs": [{"name": "a", "task": "isr"}],
            },
            "jobs[0].command (template of tasks.isr)",
            "unknown placeholder {visit}",
        ),
        ({"name": "w", "jobs": [job(command="echo ${HOME")]}, "jobs[0].command", "write {{ and }}"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_problem_names_the_file_and_the_key_path(tmp_path, doc, key, message):
    found = problems(tmp_path, doc)
    path = str(tmp_path / "dag.json")
    assert any(p.startswith(f"{path}: {key}: ") and message in p for p in found), found


@pytest.mark.parametrize(
    "jobs, message",
    [
        (
            [job("a", parents=["b"]), job("b", parents=["a"])],
            "jobs: the dependencies form a cycle through jobs",
        ),
        ([job("a"), job("a")], "jobs[1] (a): duplicate job name"),
        ([job("a", parents=["ghost"])], "jobs: job 'a': unknown parent 'ghost'"),
        ([job("a", outputs=["x"]), job("b", outputs=["x"])], "jobs: product 'x' is written by two jobs"),
        ([job("a", inputs=["raw"])], "input 'raw' has no producer; add the job that writes it or declare"),
    ],
    ids=["cycle", "duplicate", "unknown-parent", "two-writers", "no-producer"],
)
def test_the_graph_is_checked_locally_with_the_servers_rules(tmp_path, jobs, message):
    found = problems(tmp_path, {"name": "w", "jobs": jobs})
    assert any(message in p and p.startswith(str(tmp_path / "dag.json")) for p in found), found


def test_a_product_both_available_and_written_is_refused(tmp_path):
    doc = {"name": "w", "available": ["x"], "jobs": [job(outputs=["x"])]}
    (found,) = problems(tmp_path, doc)
    assert found.startswith(f"{tmp_path / 'dag.json'}: jobs[0].outputs: product 'x' is declared available")


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, {"name": "", "jobs": [job(cores=0), job("b", inputs="x")]})
    assert len(found) == 3


def test_an_input_declared_available_needs_no_producer(tmp_path):
    dag = dagfile.load(write(tmp_path, {"name": "w", "available": ["raw"], "jobs": [job(inputs=["raw"])]}))
    assert dag.body["available"] == ["raw"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DagFileError, match="nope.yaml: no such file"):
        dagfile.load(tmp_path / "nope.yaml")


def test_invalid_json_is_reported_with_its_line(tmp_path):
    found = problems(tmp_path, '{"name": "w",\n "jobs": [}')
    assert (
        found[0].startswith(str(tmp_path / "dag.json") + ": line 2 column") and "not valid JSON" in found[0]
    )


def test_invalid_yaml_is_reported_with_its_line(tmp_path):
    found = problems(tmp_path, "name: w\njobs: [a\n", name="dag.yaml")
    assert found[0].startswith(str(tmp_path / "dag.yaml") + ": line ") and "not valid YAML" in found[0]


def test_a_document_that_is_not_a_mapping_is_refused(tmp_path):
    found = problems(tmp_path, "- a\n- b\n", name="dag.yaml")
    assert found == [
        f"{tmp_path / 'dag.yaml'}: expected a mapping with name, owner, available, sites, site, tasks, "
        "clusters, jobs, got a list"
    ]


# ---------------------------------------------------------------- expansion


def test_task_defaults_are_expanded_into_each_job_and_jobs_override_them(tmp_path):
    doc = """
name: w
tasks:
  isr: {command: "isr {name}", cores: 2, memory_mb: 1500, walltime_s: 60, priority: 5, queue: small,
        max_attempts: 4, env: {A: "1", B: "2"}}
jobs:
  - {name: plain, task: isr}
  - {name: big, label: isr, memory_mb: 4000, queue: big, env: {B: "3"}, command: "special"}
"""
    plain, big = dagfile.load(write(tmp_path, doc, "dag.yaml")).jobs
    assert plain == {
        "name": "plain",
        "task": "isr",
        "command": "isr plain",
        "cores": 2,
        "memory_mb": 1500,
        "walltime_s": 60,
        "priority": 5,
        "queue": "small",
        "max_attempts": 4,
        "env": {"A": "1", "B": "2"},
    }
    assert big["memory_mb"] == 4000 and big["queue"] == "big" and big["command"] == "special"
    assert big["env"] == {"A": "1", "B": "3"} and big["cores"] == 2 and big["task"] == "isr"


def test_memory_retry_settings_pass_through_to_the_jobs(tmp_path):
    doc = {"name": "w", "tasks": {"isr": {"command": "true", "memory_mb": 2000, "memory_multiplier": 2,
                                          "memory_max_mb": 8000, "retry_unless_exit": [3]}},
           "jobs": [{"name": "a", "task": "isr"}]}  # fmt: skip
    (only,) = dagfile.load(write(tmp_path, doc)).jobs
    assert (only["memory_multiplier"], only["memory_max_mb"], only["retry_unless_exit"]) == (2, 8000, [3])


def test_a_command_template_is_filled_with_the_job_name_products_and_vars(tmp_path):
    doc = {
        "name": "w",
        "available": ["raw/1", "bias"],
        "tasks": {"isr": {"command": "isr {name} -v {visit:04d} -i {inputs} -o {outputs} ${{HOME}}"}},
        "jobs": [
            {
                "name": "j",
                "task": "isr",
                "vars": {"visit": 7},
                "inputs": ["raw/1", "bias"],
                "outputs": ["post/1"],
            }
        ],
    }
    (only,) = dagfile.load(write(tmp_path, doc)).jobs
    assert only["command"] == "isr j -v 0007 -i raw/1 bias -o post/1 ${HOME}"


def test_jobs_without_a_task_go_to_the_default_task(tmp_path):
    (only,) = dagfile.load(write(tmp_path, {"name": "w", "jobs": [job()]})).jobs
    assert only["task"] == "default"


def test_the_body_is_what_the_rest_api_takes(tmp_path):
    dag = dagfile.load(write(tmp_path, {"name": "w", "owner": "ann", "jobs": [job()]}))
    assert dag.body == {
        "name": "w",
        "owner": "ann",
        "jobs": [{"name": "a", "task": "default", "command": "true"}],
    }


def test_the_plan_counts_jobs_per_task_in_file_order_and_finds_the_roots(tmp_path):
    doc = {
        "name": "w",
        "available": ["raw"],
        "jobs": [
            job("b1", task="b", inputs=["raw"], outputs=["x"]),
            job("a1", task="a", inputs=["x"]),
            job("b2", task="b", parents=["b1"]),
            job("b3", task="b"),
        ],
    }
    plan = dagfile.load(write(tmp_path, doc)).plan()
    assert plan["tasks"] == {"b": 3, "a": 1} and list(plan["tasks"]) == ["b", "a"]
    assert plan["roots"] == ["b1", "b3"] and plan["n_jobs"] == 4 and plan["n_products"] == 1


@pytest.mark.parametrize("name", ["rubin-small.yaml", "ml-hyperparameter.json"])
def test_the_shipped_examples_are_valid(name):
    dag = dagfile.load(EXAMPLES / name)
    assert dag.jobs and dag.roots()


def test_the_rubin_example_has_the_pipeline_shape():
    dag = dagfile.load(EXAMPLES / "rubin-small.yaml")
    assert dag.labels == {
        "isr": 6,
        "characterizeImage": 6,
        "calibrate": 6,
        "consolidateVisitSummary": 2,
        "finalMerge": 1,
    }
    assert all(j["task"] == "isr" for j in dag.jobs if j["name"] in dag.roots())


# ---------------------------------------------------------------- sites


def test_a_dag_may_spread_its_jobs_over_sites_by_share(tmp_path):
    dag = dagfile.load(write(tmp_path, {"name": "w", "sites": {"FrDF": 2, "USDF": 1}, "jobs": [job()]}))
    assert dag.body["sites"] == {"FrDF": 2, "USDF": 1} and "site" not in dag.body
    assert dag.plan()["sites"] == {"FrDF": 2, "USDF": 1}


def test_a_dag_may_be_pinned_to_one_site(tmp_path):
    dag = dagfile.load(write(tmp_path, "name: w\nsite: USDF\njobs: [{name: a, command: 'true'}]\n", "d.yaml"))
    assert dag.body["site"] == "USDF" and "sites" not in dag.body and dag.plan()["sites"] == {"USDF": 1}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"sites": {"FrDF": 1}, "site": "USDF"}, "site: give 'sites' (shares over several sites) or 'site'"),
        (
            {"sites": ["FrDF"]},
            "sites: expected a mapping of site names to shares (e.g. FrDF: 0.5), got a list",
        ),
        ({"sites": {}}, "sites: expected a mapping of site names to shares"),
        ({"sites": {"FrDF": 0}}, "sites.FrDF: expected a share (a number from 0.000001 to 1000000), got 0"),
        ({"sites": {"FrDF": "half"}}, "sites.FrDF: expected a share (a number from 0.000001 to 1000000)"),
        ({"site": ""}, "site: expected the name of a site, got ''"),
    ],
)
def test_bad_sites_are_refused_naming_the_key(tmp_path, extra, message):
    found = problems(tmp_path, {"name": "w", "jobs": [job()], **extra})
    assert any(message in p for p in found), found
