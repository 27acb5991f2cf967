"""One database handle for the whole process, bound from `DATABASE_URL`.

The models bind to a `DatabaseProxy`; `init_database` decides at start-up whether that is a
SQLite file (WAL, busy timeout, so the gateway's writer and the admin app can share it) or
MariaDB through PyMySQL.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect

DEFAULT_DATABASE_URL = "sqlite:///data/mindrouter.db"

database = peewee.DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10_000,
    "foreign_keys": 1,
    "synchronous": "normal",
}


class SqliteDatabase(peewee.SqliteDatabase):
    """Transactions take SQLite's write lock when they begin (BEGIN IMMEDIATE).

    In WAL mode a transaction that reads first and writes later fails at once with "database is
    locked" when another connection committed in between, whatever the busy timeout; taking the lock
    up front makes it wait its turn instead (the gateway's writer and the admin app share the file).
    """

    def atomic(self, lock_type: str | None = None):
        return super().atomic(lock_type=lock_type or "IMMEDIATE")


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def open_database(url: str) -> peewee.Database:
    """A new, unbound database object for `url` (sqlite:///path or mysql://user:pass@host:port/db)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    if scheme in ("mysql", "mariadb"):
        return connect(url.replace("mariadb://", "mysql://", 1), charset="utf8mb4")
    raise ValueError(f"unsupported DATABASE_URL scheme {scheme!r} (use sqlite:///path or mysql://user:pass@host:3306/db)")


def init_database(url: str | None = None) -> peewee.Database:
    """Bind the shared proxy to the database at `url` (default: `DATABASE_URL`)."""
    db = open_database(url or database_url())
    database.initialize(db)
    return db
