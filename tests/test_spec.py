"""The job specification: one definition, its messages, and the doors that use it."""

import base64
import json

import msgspec
import pytest

from pandaflow import spec
from pandaflow.executors import panda


def submission(*jobs, **fields) -> bytes:
    return json.dumps({"name": "w", "jobs": list(jobs), **fields}).encode()


# ---------------------------------------------------------------- messages name the field path


@pytest.mark.parametrize(
    "job, message",
    [
        ({"cores": 2.5}, "jobs[3].cores: expected an integer of at least 1, got 2.5"),
        ({"cores": 2**31}, "jobs[3].cores: expected an integer from 1 to 2147483647, got 2147483648"),
        ({"memory_mb": -1}, "jobs[3].memory_mb: expected a non-negative integer, got -1"),
        ({"walltime_s": 0}, "jobs[3].walltime_s: expected a positive number of seconds, got 0"),
        ({"priority": "high"}, "jobs[3].priority: expected an integer, got 'high'"),
        ({"always": 1}, "jobs[3].always: expected true or false, got 1"),
        ({"kind": "java"}, "jobs[3].kind: expected one of 'shell', 'python', got 'java'"),
        ({"env": {"PATH": ["/bin"]}}, "jobs[3].env.PATH: expected a string, got a list"),
        (
            {"inputs": ["raw", ""]},
            "jobs[3].inputs[1]: expected a non-empty string of at most 500 characters, got ''",
        ),
        (
            {"buffer": "not base64!"},
            "jobs[3].buffer: expected base64 text (the payload bytes, base64-encoded)",
        ),
        ({"memory_multiplier": 101}, "jobs[3].memory_multiplier: expected a number from 1 to 100, got 101"),
        ({"gpus": 1}, "jobs[3].gpus: unknown field; known fields: command, env, cores"),
        (
            {"buffer_b64": "AA=="},
            "jobs[3].buffer_b64: renamed 'buffer' (the same base64 text); rename the key",
        ),
    ],
)
def test_a_bad_field_is_named_by_its_path_with_what_was_expected_and_given(job, message):
    request = spec.decode_submission(submission({}, {}, {}, {"command": "x", **job}), spec.SubmitRequest)
    assert isinstance(request.jobs[3], spec.Invalid)
    assert request.jobs[3].problem.startswith(message)


def test_every_bad_job_is_found_with_each_of_its_bad_fields():
    raw = submission({"cores": 0, "memory_mb": "x"}, {"command": "ok"}, {"name": "n", "colour": "red"})
    jobs = spec.decode_submission(raw, spec.SubmitRequest).jobs
    assert [type(job).__name__ for job in jobs] == ["Invalid", "Job", "Invalid"]
    assert jobs[0].problem == (
        "jobs[0].cores: expected an integer of at least 1, got 0; "
        "jobs[0].memory_mb: expected a non-negative integer, got 'x'"
    )
    assert jobs[2].problem.startswith("jobs[2].colour: unknown field") and jobs[2].problem.endswith(
        "(job 'n')"
    )


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"[]", "the request body: expected an object, got an empty list"),
        (b'{"name": "w"}', "the request body: 'jobs' is missing; it is required"),
        (submission({}, prio=1), "the request body: unknown field 'prio'; known fields: name, jobs"),
        (submission({}, site="A", sites={"A": 1}), None),  # the server's site rules say why
        (
            submission({}, sites={"A": 0}),
            "sites.A: expected a share (a number from 0.000001 to 1000000), got 0",
        ),
        (b'{"name": ', "the request body is not valid JSON (input data was truncated)"),
        (submission({"name": "a\x00b"}), "jobs[0].name: text may not contain NUL characters (\\u0000)"),
    ],
)
def test_a_bad_request_around_the_jobs_says_what_is_wrong(raw, message):
    if message is None:
        assert spec.decode_submission(raw, spec.SubmitRequest).site == "A"
        return
    with pytest.raises(spec.BodyError) as refused:
        spec.decode_submission(raw, spec.SubmitRequest)
    assert str(refused.value).startswith(message)


# ---------------------------------------------------------------- one definition, every door


def test_a_payload_is_base64_over_json_and_raw_bytes_over_msgpack():
    payload = b"\x00\x01pickled"
    over_json = spec.decode_submission(
        submission({"buffer": base64.b64encode(payload).decode()}), spec.SubmitRequest
    )
    assert over_json.jobs[0].buffer == payload
    assert spec.job_from({"buffer": payload}).buffer == payload
    assert (
        spec.job_from(msgspec.msgpack.decode(msgspec.msgpack.encode({"buffer": payload}))).buffer == payload
    )


def test_a_plain_dict_job_is_checked_by_the_same_definition():
    with pytest.raises(spec.SpecError, match=r"^jobs\[7\].cores: expected an integer of at least 1, got 0$"):
        spec.job_from({"command": "x", "cores": 0}, "jobs[7]")


def test_the_kind_of_a_job_follows_from_what_it_runs():
    assert spec.job_kind(spec.Job(command="true")) == ("shell", "")
    assert spec.job_kind(spec.Job(buffer=b"x")) == ("python", "")
    assert spec.job_kind(spec.Job(kind="shell"))[1] == "a shell job needs a non-empty 'command' string"
    assert "needs 'buffer'" in spec.job_kind(spec.Job(command="x", kind="python"))[1]


def test_the_resource_specification_maps_onto_job_fields():
    fields = spec.resource_fields(
        {"cores": 2, "memory": 4000, "disk": 10, "running_time_min": 1.5, "priority": -3, "queue": "q",
         "max_attempts": 4, "memory_multiplier": 2, "memory_max": 16000}
    )  # fmt: skip
    assert fields == {
        "cores": 2, "memory_mb": 4000, "disk_mb": 10, "walltime_s": 90.0, "priority": -3, "queue": "q",
        "max_attempts": 4, "memory_multiplier": 2.0, "memory_max_mb": 16000,
    }  # fmt: skip
    assert spec.resource_fields({}) == {}


def test_a_memory_multiplier_of_one_turns_escalation_off_and_below_one_is_refused():
    assert spec.resource_fields({"memory_multiplier": 1}) == {"memory_multiplier": 1.0}
    with pytest.raises(spec.ResourceError) as refused:
        spec.resource_fields({"memory_multiplier": 0.5})
    assert refused.value.keys == {"memory_multiplier"}
    assert str(refused.value) == "memory_multiplier: expected a number from 1 to 100, got 0.5"


def test_unknown_resource_keys_are_all_named_with_the_keys_allowed():
    with pytest.raises(spec.ResourceError) as refused:
        spec.resource_fields({"gpus": 1, "walltime": 5, "cores": 1})
    assert refused.value.keys == {"gpus", "walltime"}
    assert "'gpus', 'walltime'" in str(refused.value) and "memory_multiplier, memory_max" in str(
        refused.value
    )


def test_the_executor_takes_its_keys_from_the_spec():
    assert panda.RESOURCE_KEYS == spec.RESOURCE_KEYS
    assert {"memory_multiplier", "memory_max"} <= set(panda.RESOURCE_KEYS)


def test_dag_file_task_defaults_are_the_job_fields_of_the_spec():
    from pandaflow import dagfile

    assert set(dagfile.TASK_KEYS) <= set(spec.Job.__struct_fields__)
    assert set(dagfile.JOB_KEYS) - set(spec.Job.__struct_fields__) == {"label", "vars"}
