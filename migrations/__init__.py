"""Numbered schema migrations and their runner.

Each module `NNNN_name.py` defines `upgrade(db, migrator)`. Every migration is idempotent (it
checks before it creates or alters), so applying it twice, or on a database that an earlier
migration already brought to the newest shape, changes nothing; that is what lets the same
files run on SQLite and MariaDB. Applied versions are recorded in `schema_migrations`.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

import peewee
from playhouse.migrate import MySQLMigrator, SchemaMigrator, SqliteMigrator


class SchemaMigration(peewee.Model):
    version = peewee.IntegerField(primary_key=True)
    name = peewee.CharField(max_length=128)
    applied_at = peewee.DateTimeField()

    class Meta:
        table_name = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    module: ModuleType


class SchemaOutOfDate(RuntimeError):
    pass


def available_migrations() -> list[Migration]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        number, _, name = info.name.partition("_")
        if number.isdigit():
            found.append(Migration(int(number), name, importlib.import_module(f"{__name__}.{info.name}")))
    return sorted(found, key=lambda m: m.version)


def migrator_for(db: peewee.Database) -> SchemaMigrator:
    return MySQLMigrator(db) if isinstance(db, peewee.MySQLDatabase) else SqliteMigrator(db)


def applied_versions(db: peewee.Database) -> set[int]:
    with SchemaMigration.bind_ctx(db):
        if not SchemaMigration.table_exists():
            return set()
        return {row.version for row in SchemaMigration.select(SchemaMigration.version)}


def pending_migrations(db: peewee.Database) -> list[Migration]:
    done = applied_versions(db)
    return [m for m in available_migrations() if m.version not in done]


def upgrade(db: peewee.Database) -> list[Migration]:
    """Apply every pending migration in order; returns what was applied."""
    with SchemaMigration.bind_ctx(db):
        SchemaMigration.create_table(safe=True)
    applied = []
    for migration in pending_migrations(db):
        with db.atomic():
            migration.module.upgrade(db, migrator_for(db))
            with SchemaMigration.bind_ctx(db):
                SchemaMigration.create(
                    version=migration.version,
                    name=migration.name,
                    applied_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                )
        applied.append(migration)
    return applied


def require_current_schema(db: peewee.Database) -> None:
    """Raise with the command to run when the database lacks migrations this code expects."""
    pending = pending_migrations(db)
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        raise SchemaOutOfDate(
            f"database schema is out of date (pending: {names}); "
            "run `flask --app admin_app db upgrade` against the same DATABASE_URL"
        )
