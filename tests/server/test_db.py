"""The schema the migrations build: what the hot path counts on."""

import sqlite3

from sqlalchemy import inspect

from pandaflow.server.dispatch.assignment import _SELECT_READY
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database


def test_the_migrations_build_every_table_and_column_of_the_schema(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path}/m.db")
    found = inspect(engine)
    for table in s.metadata.sorted_tables:
        columns = {c["name"] for c in found.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    engine.dispose()


def test_dispatch_walks_its_index_in_priority_order_without_sorting(tmp_path):
    """A queue with a million ready jobs must not be sorted on every pilot request."""
    open_database(f"sqlite:///{tmp_path}/m.db").dispose()
    with sqlite3.connect(tmp_path / "m.db") as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + _SELECT_READY, ("q", 1, 1, 1))
        plan = " ".join(row[-1] for row in rows)
    assert "USING INDEX ix_jobs_dispatch" in plan
    assert "TEMP B-TREE" not in plan
