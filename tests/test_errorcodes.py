"""The error code table shared by pilot, server and monitor."""

from __future__ import annotations

import pytest

from pandaflow.errorcodes import TABLE, ErrorCode, describe, is_retryable

RETRYABLE = [
    "PAYLOAD_NONZERO_EXIT", "OUT_OF_MEMORY", "WALLTIME_EXCEEDED", "LOST_HEARTBEAT", "ENV_CHECK_FAILED",
    "WORKER_DIED", "PILOT_TERMINATED", "LOST_IN_DISPATCH", "DISK_FULL",
]  # fmt: skip
FINAL = ["OK", "PAYLOAD_EXCEPTION", "KILLED_ON_REQUEST", "SERIALIZATION_ERROR", "BAD_PAYLOAD", "SERVER_ERROR"]


def test_ok_is_zero():
    assert ErrorCode.OK == 0


def test_codes_keep_their_published_numbers():
    # Stored in databases and shown to users: a renumbering is a breaking change.
    assert {c.name: int(c) for c in ErrorCode} == {
        "OK": 0, "PAYLOAD_EXCEPTION": 1001, "PAYLOAD_NONZERO_EXIT": 1002, "BAD_PAYLOAD": 1003,
        "SERIALIZATION_ERROR": 1004, "OUT_OF_MEMORY": 1101, "WALLTIME_EXCEEDED": 1102, "DISK_FULL": 1103,
        "WORKER_DIED": 1201, "PILOT_TERMINATED": 1202, "ENV_CHECK_FAILED": 1203, "KILLED_ON_REQUEST": 1204,
        "LOST_HEARTBEAT": 1301, "LOST_IN_DISPATCH": 1302, "SERVER_ERROR": 1399,
    }  # fmt: skip


@pytest.mark.parametrize("name", RETRYABLE)
def test_transient_failures_are_retryable(name):
    assert is_retryable(ErrorCode[name]) and is_retryable(int(ErrorCode[name]))


@pytest.mark.parametrize("name", FINAL)
def test_success_user_decisions_and_permanent_failures_are_not_retryable(name):
    assert not is_retryable(ErrorCode[name])


def test_unknown_code_is_not_retryable():
    assert not is_retryable(4242)


def test_describe_gives_name_and_description():
    expected = "OUT_OF_MEMORY: the payload was killed for exceeding its memory limit"
    assert describe(ErrorCode.OUT_OF_MEMORY) == expected
    assert describe(1102).startswith("WALLTIME_EXCEEDED: ")


def test_describe_of_an_unknown_code_says_so():
    assert describe(4242) == "UNKNOWN: unknown error code 4242"


def test_every_code_has_a_description():
    assert all(c.description for c in ErrorCode)


def test_table_lists_every_code_in_order_with_name_retryability_and_description():
    assert TABLE == sorted(TABLE)
    assert [row[0] for row in TABLE] == [int(c) for c in ErrorCode]
    assert (1101, "OUT_OF_MEMORY", True, ErrorCode.OUT_OF_MEMORY.description) in TABLE
