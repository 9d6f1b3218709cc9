"""Database engines and schema migrations.

SQLite (a file, WAL mode) is the embedded default; PostgreSQL is used by URL
(``postgresql+psycopg://user:pass@host/db``). The schema is created and upgraded with Alembic.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class DatabaseError(RuntimeError):
    """The database cannot be opened or migrated; the message says what to check."""


def sqlite_url(path: str | os.PathLike) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """Create an engine; SQLite files get WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        if url not in ("sqlite://", "sqlite:///:memory:"):
            path = Path(url.split("///", 1)[1])
            if not path.parent.exists():
                raise DatabaseError(f"database folder {path.parent} does not exist; create it or pass --db")
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=pool_size, max_overflow=4
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # WAL lets the REST API read while the dispatcher writes; NORMAL sync in WAL mode
            # survives a killed process (only an OS crash can lose the last commits).
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        return engine
    if url.startswith("postgres"):
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    raise DatabaseError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql+psycopg://...")


def _alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (creating it on an empty database)."""
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except Exception as exc:
        raise DatabaseError(f"cannot migrate database {engine.url!r}: {exc}") from exc


def is_current(engine: Engine) -> bool:
    """True when the database already has the pandaflow schema at the newest revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(engine.url.render_as_string(hide_password=False)))
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return MigrationContext.configure(conn).get_current_revision() == script.get_current_head()


def open_database(url: str, *, migrate: bool = True) -> Engine:
    """Open (and by default create or upgrade) the database at ``url``."""
    engine = make_engine(url)
    if migrate and not is_current(engine):
        upgrade(engine)
    return engine
