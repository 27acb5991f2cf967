"""The store and its migrations behave the same on SQLite and MariaDB."""

from __future__ import annotations

import peewee
import pytest

import migrations
from store import init_database
from store.models import (
    ALL_MODELS,
    ApiKey,
    Backend,
    BackendModel,
    Request,
    RequestBody,
    User,
    key_by_prefix,
)


def test_fresh_database_reports_pending_migrations(any_database_url):
    db = init_database(any_database_url)
    with pytest.raises(migrations.SchemaOutOfDate, match="flask --app admin_app db upgrade"):
        migrations.require_current_schema(db)


def test_upgrade_creates_every_table_and_is_idempotent(any_database_url):
    db = init_database(any_database_url)
    applied = migrations.upgrade(db)
    assert [m.version for m in applied] == [m.version for m in migrations.available_migrations()]
    assert migrations.upgrade(db) == []
    migrations.require_current_schema(db)
    assert {model._meta.table_name for model in ALL_MODELS} <= set(db.get_tables())


def test_reapplying_a_migration_changes_nothing(migrated_db):
    """Each migration checks before it creates, so a half-recorded run can be repeated safely."""
    tables = set(migrated_db.get_tables())
    for migration in migrations.available_migrations():
        migration.module.upgrade(migrated_db, migrations.migrator_for(migrated_db))
    assert set(migrated_db.get_tables()) == tables


def test_key_lookup_by_prefix_joins_its_user(migrated_db):
    user = User.create(username="ada", role="faculty")
    ApiKey.create(user=user, prefix="abcdefgh", key_hash="$argon2id$…")
    found = key_by_prefix("abcdefgh")
    assert found.user.username == "ada" and found.user.weight == 3.0
    assert key_by_prefix("zzzzzzzz") is None


def test_weight_override_beats_the_role_weight(migrated_db):
    assert User.create(username="bob", role="student", weight_override=2.5).weight == 2.5


def test_backend_models_are_unique_per_backend(migrated_db):
    backend = Backend.create(name="gpu-1", url="http://gpu-1:11434", engine="ollama")
    BackendModel.create(backend=backend, name="llama3.2:latest")
    with pytest.raises(peewee.IntegrityError), migrated_db.atomic():
        BackendModel.create(backend=backend, name="llama3.2:latest")


def test_audit_bodies_hold_more_than_64_kib(migrated_db):
    """A prompt with an inline image outgrows MySQL's TEXT; the body column must keep it whole."""
    request = Request.create(request_id="r1", endpoint="/api/chat", client_dialect="ollama")
    prompt = "x" * 300_000
    RequestBody.create(request=request, prompt=prompt)
    assert RequestBody.get(RequestBody.request == request).prompt == prompt


def test_backend_telemetry_columns_are_added_to_a_database_made_before_them(any_database_url):
    """0001 creates today's tables; a database made by an older 0001 lacks later columns until 0002 runs."""
    from playhouse.migrate import migrate

    db = init_database(any_database_url)
    migrations.upgrade(db)
    added = ("telemetry_url", "gpu_indices", "refresh_requested_at")
    migrate(*(migrations.migrator_for(db).drop_column("backend", name) for name in added))
    migrations.SchemaMigration.bind(db)
    migrations.SchemaMigration.delete().where(migrations.SchemaMigration.version >= 2).execute()
    assert [m.version for m in migrations.upgrade(db)][:1] == [2]
    assert set(added) <= {column.name for column in db.get_columns("backend")}


def test_the_assembled_answer_column_is_added_to_a_database_made_before_it(any_database_url):
    from playhouse.migrate import migrate

    db = init_database(any_database_url)
    migrations.upgrade(db)
    migrate(migrations.migrator_for(db).drop_column("request_body", "response_text"))
    migrations.SchemaMigration.bind(db)
    migrations.SchemaMigration.delete().where(migrations.SchemaMigration.version >= 3).execute()
    request = Request.create(request_id="before-0003", endpoint="/api/chat", client_dialect="ollama")
    db.execute_sql("INSERT INTO request_body (request_id, prompt, response, validation) VALUES (%s, '', 'old', '')"
                   .replace("%s", str(request.id)))

    assert [m.version for m in migrations.upgrade(db)][:1] == [3]  # later migrations run again after it
    assert RequestBody.get(RequestBody.request == request).response_text == ""  # rows made before it: empty


def test_the_waiting_bound_override_is_added_to_a_database_made_before_it(any_database_url):
    from playhouse.migrate import migrate

    db = init_database(any_database_url)
    migrations.upgrade(db)
    migrate(migrations.migrator_for(db).drop_column("user", "max_queued_override"))
    migrations.SchemaMigration.bind(db)
    migrations.SchemaMigration.delete().where(migrations.SchemaMigration.version >= 5).execute()
    assert [m.version for m in migrations.upgrade(db)][:1] == [5]
    assert "max_queued_override" in {column.name for column in db.get_columns("user")}
    assert [m.version for m in migrations.upgrade(db)] == []  # and only once


INDEXES_OF_0004 = {"request": {"request_user_id_created_at", "request_model_created_at",
                                 "request_backend_id_created_at", "request_status_created_at"},
                   "usage_hour": {"usage_hour_user_id_hour"}}


def index_names(db, table: str) -> set[str]:
    return {index.name for index in db.get_indexes(table)}


def test_the_audit_tables_single_column_indexes_are_dropped_from_a_database_made_before(any_database_url):
    """Each dropped index's column leads a composite index that stays (on MariaDB it serves the foreign key)."""
    db = init_database(any_database_url)
    migrations.upgrade(db)

    made_by_0004 = INDEXES_OF_0004["request"]
    redundant = {"request_user_id": "user_id", "request_model": "model", "request_backend_id": "backend_id",
                 "request_status": "status"}
    present = index_names(db, "request")
    assert made_by_0004 <= present and not set(redundant) & present  # a new database never has them
    migrator = migrations.migrator_for(db)
    for column in redundant.values():  # as an older 0001 made them
        migrator.add_index("request", (column,)).run()
    migrations.SchemaMigration.bind(db)
    migrations.SchemaMigration.delete().where(migrations.SchemaMigration.version >= 8).execute()

    assert [m.version for m in migrations.upgrade(db)][:1] == [8]
    present = index_names(db, "request")
    assert made_by_0004 <= present and not set(redundant) & present
    user = User.create(username="audited", role="student")
    Request.create(request_id="after-0008", endpoint="/api/chat", client_dialect="ollama", user=user, status=200)
    assert Request.select().where(Request.user == user, Request.status == 200).count() == 1


def test_the_dashboards_indexes_are_added_to_a_database_made_before_them(any_database_url):
    db = init_database(any_database_url)
    migrations.upgrade(db)
    migrator = migrations.migrator_for(db)
    for column in ("user_id", "backend_id"):  # MariaDB keeps an index under each foreign key
        migrator.add_index("request", (column,)).run()
    for table, names in INDEXES_OF_0004.items():
        for name in names:
            migrator.drop_index(table, name).run()
    migrations.SchemaMigration.bind(db)
    migrations.SchemaMigration.delete().where(migrations.SchemaMigration.version >= 4).execute()

    migrations.upgrade(db)
    for table, names in INDEXES_OF_0004.items():
        assert names <= index_names(db, table)
