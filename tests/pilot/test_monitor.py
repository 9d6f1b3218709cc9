"""Memory sampling of process trees."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pandaflow.pilot.monitor import children_map, sample_tree, tree_pids

MB = 1 << 20


@pytest.fixture
def child():
    """A child process holding 100 MB until killed."""
    code = "import sys, time; x = b'x' * (100 << 20); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_sample_of_a_single_process_counts_its_rss():
    rss, pss, nprocs = sample_tree(os.getpid())
    assert nprocs >= 1 and rss > 5
    assert pss == rss  # without pss=True, RSS stands in for PSS


def test_sample_sums_memory_over_descendants(child):
    alone, _, _ = sample_tree(child.pid)
    rss, _, nprocs = sample_tree(os.getpid())
    assert alone > 100
    assert nprocs >= 2 and rss > alone


def test_sample_with_pss_measures_proportional_set_size(child):
    rss, pss, _ = sample_tree(child.pid, pss=True)
    assert 100 < pss <= rss


def test_sample_of_a_vanished_process_is_empty():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert sample_tree(proc.pid, pss=True) == (0.0, 0.0, 0)


def test_descendants_that_vanished_before_they_were_read_are_skipped():
    gone = subprocess.Popen(["true"])
    gone.wait()
    rss, _, nprocs = sample_tree(os.getpid(), children={os.getpid(): [gone.pid]})
    assert nprocs == 1 and rss > 5


def test_children_map_lets_one_scan_serve_several_trees(child):
    kids = children_map()
    assert child.pid in kids[os.getpid()]
    assert tree_pids(os.getpid(), kids)[0] == os.getpid()
    assert sample_tree(os.getpid(), children=kids)[2] == sample_tree(os.getpid())[2]
