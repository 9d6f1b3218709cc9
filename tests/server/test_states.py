import pytest

from pandaflow.server import states
from pandaflow.server.states import IllegalTransition, transition


def job(status, **kw):
    return {"id": 1, "status": status, "attempt": 0, "max_attempts": 3, **kw}


def test_dispatch_counts_the_attempt_and_records_the_pilot():
    values = transition(job("ready"), "dispatched", 10.0, pilot_id=7)
    assert values["status"] == "dispatched"
    assert values["attempt"] == 1
    assert values["pilot_id"] == 7
    assert values["dispatched_at"] == 10.0


def test_a_failed_attempt_with_attempts_left_goes_back_to_ready_without_a_pilot():
    values = transition(job("running", attempt=1, queue="q"), "ready", 5.0, error_code=1201, error_diag="oom")
    assert values["status"] == "ready"
    assert values["pilot_id"] is None
    assert values["error_code"] == 1201


@pytest.mark.parametrize(
    "old,new",
    [
        ("finished", "ready"),
        ("finished", "running"),
        ("ready", "finished"),
        ("pending", "dispatched"),
        ("pruned", "running"),
        ("cancelled", "finished"),
    ],
)
def test_illegal_transitions_raise(old, new):
    with pytest.raises(IllegalTransition, match=f"{old!r} -> {new!r}"):
        transition(job(old), new, 0.0)


def test_final_states_have_no_way_out_except_back_to_waiting_on_a_user_retry():
    for old in states.FINAL_STATES:
        targets = {to for (frm, to) in states.TRANSITIONS if frm == old}
        assert targets <= {"ready", "pending"}


def test_a_pruned_job_is_revived_to_wait_again():
    values = transition(job("pruned"), "pending", 0.0)
    assert values["status"] == "pending" and values["error_diag"] == ""


def test_a_retried_job_whose_inputs_are_gone_again_waits_with_a_fresh_budget():
    values = transition(job("cancelled", attempt=1), "pending", 0.0, extra_attempts=2)
    assert values["status"] == "pending" and values["max_attempts"] == 3


def test_user_retry_grants_a_fresh_attempt_budget():
    values = transition(job("failed", attempt=3), "ready", 0.0, extra_attempts=2)
    assert values["max_attempts"] == 5
    assert values["error_code"] == 0


def test_every_state_has_panda_and_bps_names():
    assert set(states.EXTERNAL_NAMES) == set(states.ALL_STATES)
    assert states.EXTERNAL_NAMES["pruned"][1] == "PRUNED"
