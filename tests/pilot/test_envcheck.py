"""The pilot's environment check and host description."""

from __future__ import annotations

import os
import sys

import pytest

from pandaflow.pilot.envcheck import check_environment, describe_host


def test_writable_workdir_with_space_and_modules_passes(tmp_path):
    assert check_environment(str(tmp_path), min_free_disk_mb=1) == []


def test_missing_workdir_is_created(tmp_path):
    workdir = tmp_path / "a" / "b"
    assert check_environment(str(workdir), min_free_disk_mb=1) == []
    assert workdir.is_dir()


def test_write_probe_leaves_nothing_behind(tmp_path):
    check_environment(str(tmp_path), min_free_disk_mb=1)
    assert list(tmp_path.iterdir()) == []


def test_workdir_under_a_regular_file_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    problems = check_environment(str(blocker / "work"), min_free_disk_mb=1)
    assert len(problems) == 1
    assert "cannot be created" in problems[0] and "work" in problems[0]


def test_workdir_that_is_a_regular_file_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    problems = check_environment(str(blocker), min_free_disk_mb=1)
    assert problems and "file" in problems[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_workdir_is_reported(tmp_path):
    tmp_path.chmod(0o500)
    try:
        problems = check_environment(str(tmp_path), min_free_disk_mb=1)
    finally:
        tmp_path.chmod(0o700)
    assert any("not writable" in p for p in problems)


def test_too_little_free_disk_is_reported(tmp_path):
    problems = check_environment(str(tmp_path), min_free_disk_mb=1 << 40)
    assert len(problems) == 1 and "MB free" in problems[0]


def test_payload_module_that_does_not_import_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr("pandaflow.pilot.envcheck.PAYLOAD_MODULES", ("parsl", "no_such_module_for_pandaflow"))
    problems = check_environment(str(tmp_path), min_free_disk_mb=1)
    assert problems == [problems[0]] and "cannot import no_such_module_for_pandaflow" in problems[0]


def test_too_old_python_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr("pandaflow.pilot.envcheck.MIN_PYTHON", (sys.version_info.major + 1, 0))
    problems = check_environment(str(tmp_path), min_free_disk_mb=1)
    assert len(problems) == 1 and "too old" in problems[0]


def test_describe_host_summarises_the_node():
    host = describe_host()
    assert host.hostname and host.cpu_count >= 1 and host.total_memory_mb > 0
    assert host.python_version == ".".join(map(str, sys.version_info[:3]))
    assert host.as_dict()["cpu_count"] == host.cpu_count
