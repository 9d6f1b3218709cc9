"""docs/jobs.md tells the states and the transitions table as the code has them."""

from pathlib import Path

from pandaflow.server.jobs import states

DOC = (Path(__file__).resolve().parent.parent / "docs" / "jobs.md").read_text()


def _table(header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``| header``."""
    lines = DOC[DOC.index(f"| {header}") :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_documented_events_are_the_transitions_table():
    rows = _table("event")
    documented = {r[0].strip("`"): (frozenset(s.strip() for s in r[1].split(",")), r[2]) for r in rows}
    assert documented == {event: (t.sources, t.target) for event, t in states.TRANSITIONS.items()}


def test_the_documented_states_are_the_states_with_their_panda_and_bps_names():
    documented = {row[0].strip("`"): (row[2], row[3]) for row in _table("state")}
    assert documented == states.EXTERNAL_NAMES
