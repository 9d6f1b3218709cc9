"""DAG workflows run end to end on a real server and pilot: clustered payloads, pruning after a
failure, and an 'always' final job."""

from pathlib import Path

from support.waiting import wait_until

from pandaflow import dagfile

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "dags"
ENDED = "finished,failed,pruned,cancelled"


def statuses(server, wid):
    return {j["name"]: j for j in server.get("/jobs", workflow_id=wid, limit=1000)["jobs"]}


def submit(server, dag):
    reply = server.post("/workflows", dag.body)
    assert reply.status_code == 201, reply.text
    return reply.json()["workflow_id"]


def test_a_clustered_rubin_dag_runs_each_chain_as_one_payload(server, start_pilot):
    dag = dagfile.load(EXAMPLES / "rubin-clustered.yaml")
    wid = submit(server, dag)
    start_pilot(server, cores=2)
    wait_until(lambda: server.get("/jobs", workflow_id=wid, status=ENDED)["total"] == len(dag.jobs),
               timeout=120, what="every job to end")  # fmt: skip
    jobs = statuses(server, wid)
    assert {j["status"] for j in jobs.values()} == {"finished"}
    assert len([n for n in jobs if n.startswith("singleFrame_")]) == 6
    log = server_log(server, jobs["singleFrame_903342_10"]["id"])
    assert [line for line in log.splitlines() if line.startswith("[pandaflow] step")] == [
        "[pandaflow] step 1/3: isr-903342-10",
        "[pandaflow] step 2/3: characterizeImage-903342-10",
        "[pandaflow] step 3/3: calibrate-903342-10",
    ]


def server_log(server, job_id):
    import requests

    reply = requests.get(f"{server.url}/api/v1/jobs/{job_id}/log", headers=server.headers(), timeout=30)
    reply.raise_for_status()
    return reply.text


def test_a_failed_step_prunes_downstream_and_the_always_job_still_runs(server, start_pilot):
    dag = dagfile.parse({
        "name": "fails",
        "clusters": {"chain": {"tasks": ["a", "b"], "dimensions": ["i"]}},
        "tasks": {"a": {"command": "echo a{i}"},
                  "b": {"command": "test {i} != 2 || exit 9", "max_attempts": 1},
                  "merge": {"command": "echo merge"}, "final": {"command": "echo final", "always": True}},
        "jobs": [
            *({"name": f"a{i}", "task": "a", "vars": {"i": i}, "outputs": [f"x{i}"]} for i in (1, 2)),
            *({"name": f"b{i}", "task": "b", "vars": {"i": i}, "inputs": [f"x{i}"], "outputs": [f"y{i}"]}
              for i in (1, 2)),
            {"name": "merge", "task": "merge", "inputs": ["y1", "y2"], "outputs": ["m"]},
            {"name": "final", "task": "final", "inputs": ["m"], "parents": ["a1"]},
        ],
    })  # fmt: skip
    wid = submit(server, dag)
    start_pilot(server, cores=2)
    wait_until(lambda: server.get("/jobs", workflow_id=wid, status=ENDED)["total"] == 4,
               timeout=120, what="every job to end")  # fmt: skip
    jobs = statuses(server, wid)
    assert {n: j["status"] for n, j in jobs.items()} == {
        "chain_1": "finished", "chain_2": "failed", "merge": "pruned", "final": "finished",
    }  # fmt: skip
    assert jobs["chain_2"]["exit_code"] == 9
    assert "[pandaflow] step 2/2: b2 failed with exit code 9" in server_log(server, jobs["chain_2"]["id"])
