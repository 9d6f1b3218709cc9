"""Chaos in the suite: a parsl workflow of 300 short tasks on three 1-core pilots while 6 pilots
and the server (twice) are SIGKILLed and restarted: nothing lost, wrong, duplicated or failed.

The scenario is benchmarks/chaos.py at a smaller size (the benchmark runs 1,500 tasks with 30
pilot kills and 6 server kills)."""

import chaos
import pytest


@pytest.mark.slow
def test_killing_pilots_and_the_server_loses_duplicates_and_fails_nothing(db_url, tmp_path, process_tag):
    report = chaos.run(db_url, tmp_path / "chaos", tasks=300, pilots=3, pilot_kills=6, server_kills=2)
    print(report)
    assert (report.lost, report.wrong, report.duplicated, report.failed) == (0, 0, 0, 0), report.failures
    assert report.executions >= 300
