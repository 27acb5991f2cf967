"""One database handle for the whole process, bound from `DATABASE_URL`.

The models bind to a `DatabaseProxy`; `init_database` decides at start-up whether that is a
SQLite file (WAL, busy timeout, so the gateway's writer and the admin app can share it) or
MariaDB through PyMySQL, reconnecting after a server restart and never waiting on it forever.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import peewee
from playhouse.db_url import parse
from playhouse.shortcuts import ReconnectMixin

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


# PyMySQL waits forever by default. A call that outlives these fails, and the caller (a worker
# thread's read, the writer's batch) falls back or retries; `?read_timeout=…` in the URL overrides.
MARIADB_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}


class MariaDatabase(ReconnectMixin, peewee.MySQLDatabase):
    """MariaDB through PyMySQL, surviving a server restart.

    peewee keeps one connection per thread, and after a restart each of them is dead: the gateway's
    worker threads (key checks, budgets, backend polls) and its writer thread would fail on every
    call until the process restarts. A statement outside a transaction that meets a dead
    connection reconnects and runs once more (a transaction's BEGIN is such a statement); inside a
    transaction the error reaches the caller, whose work may be half done (the writer retries its
    whole batch). A timeout is not retried: the server is hung rather than restarted, and waiting
    twice helps nobody.
    """

    reconnect_errors = ReconnectMixin.reconnect_errors + (
        (peewee.OperationalError, "1053"),  # Server shutdown in progress.
        (peewee.OperationalError, "1927"),  # Connection was killed.
    )

    def _reconnect(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except peewee.PeeweeException as exc:
            if self.in_transaction():
                raise
            if "timed out" in str(exc) or not self.reconnects_after(exc):
                self.discard_connection()
                raise
        self.discard_connection()
        self.connect()
        return func(*args, **kwargs)

    def reconnects_after(self, exc: Exception) -> bool:
        fragments = self._reconnect_errors.get(type(exc), ())
        return any(fragment in str(exc).lower() for fragment in fragments)

    def discard_connection(self) -> None:
        """Forget this thread's connection (dead or in doubt); the next call opens a new one.

        PyMySQL refuses to close a connection it already found dead ("Already closed"), so a failed
        close still forgets it."""
        if self.in_transaction():
            return
        try:
            self.close()
        except peewee.PeeweeException:
            self.dispose()


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
        params = parse(url.replace("mariadb://", "mysql://", 1))
        return MariaDatabase(params.pop("database"), **{"charset": "utf8mb4", **MARIADB_TIMEOUTS, **params})
    raise ValueError(f"unsupported DATABASE_URL scheme {scheme!r} (use sqlite:///path or mysql://user:pass@host:3306/db)")


def init_database(url: str | None = None) -> peewee.Database:
    """Bind the shared proxy to the database at `url` (default: `DATABASE_URL`)."""
    db = open_database(url or database_url())
    database.initialize(db)
    return db


def insert_rows(model: type[peewee.Model], rows: list[dict]) -> None:
    """`rows` (field name → value) into `model`'s table as one prepared statement run once per row
    (`executemany`): peewee's `insert_many` builds the SQL of every value of every row in Python, and took
    twice as long per audit row on SQLite (docs/benchmarks.md). A field a row leaves out takes its model default."""
    fields = [field for field in model._meta.sorted_fields if not isinstance(field, peewee.AutoField)]
    sql, _ = model.insert({field: None for field in fields}).sql()  # one row's statement, in the database's SQL
    model._meta.database.cursor().executemany(sql, [
        [field.db_value(row[field.name] if field.name in row else default_of(field)) for field in fields]
        for row in rows
    ])


def default_of(field: peewee.Field):
    return field.default() if callable(field.default) else field.default
