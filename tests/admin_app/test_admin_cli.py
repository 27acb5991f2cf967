"""The operator commands of DESIGN section 3, run through Flask's CLI runner on SQLite and MariaDB."""

from __future__ import annotations

from pathlib import Path

import peewee
import pytest

import migrations
from admin_app.db import app_database
from store.api_keys import key_prefix, verify_key, verify_password
from store.models import ALL_MODELS, AdminAction, ApiKey, User


def test_db_upgrade_applies_migrations_then_reports_up_to_date(unmigrated_app):
    cli = unmigrated_app.test_cli_runner()

    first = cli.invoke(args=["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "applied 0001_initial" in first.output
    assert migrations.pending_migrations(app_database(unmigrated_app)) == []

    second = cli.invoke(args=["db", "upgrade"])
    assert second.exit_code == 0, second.output
    assert second.output.strip() == "schema is up to date"


def test_commands_refuse_an_unmigrated_database_and_say_what_to_run(unmigrated_app):
    result = unmigrated_app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code != 0
    assert "flask --app admin_app db upgrade" in result.output


def test_seed_creates_the_dev_users_once(cli):
    first = cli.invoke(args=["seed"])
    assert first.exit_code == 0, first.output
    second = cli.invoke(args=["seed"])
    assert second.exit_code == 0, second.output
    assert "already exists" in second.output

    users = {u.username: u for u in User.select()}
    assert {name: u.role for name, u in users.items()} == {
        "admin": "admin",
        "faculty1": "faculty",
        "staff1": "staff",
        "student1": "student",
    }
    assert verify_password(users["admin"].password_hash, "admin123")
    assert verify_password(users["student1"].password_hash, "student123")


def test_users_create_makes_a_user_with_that_role_and_password(cli):
    result = cli.invoke(args=["users", "create", "ada", "--role", "faculty", "--password", "pw-ada"])
    assert result.exit_code == 0, result.output
    user = User.get(User.username == "ada")
    assert user.role == "faculty" and user.active
    assert verify_password(user.password_hash, "pw-ada")
    assert AdminAction.get(AdminAction.action == "user.create").target == f"user:{user.id}"


def test_users_create_without_password_makes_a_key_only_user(cli):
    assert cli.invoke(args=["users", "create", "batch", "--role", "student"]).exit_code == 0
    assert User.get(User.username == "batch").password_hash is None


def test_users_create_rejects_a_duplicate_name_and_an_unknown_role(cli):
    assert cli.invoke(args=["users", "create", "ada", "--role", "staff"]).exit_code == 0
    duplicate = cli.invoke(args=["users", "create", "ada", "--role", "staff"])
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    bad_role = cli.invoke(args=["users", "create", "bob", "--role", "wizard"])
    assert bad_role.exit_code != 0 and "wizard" in bad_role.output
    assert User.select().count() == 1


def test_keys_create_prints_the_key_alone_on_the_last_line(cli):
    cli.invoke(args=["users", "create", "ada", "--role", "student"])
    result = cli.invoke(args=["keys", "create", "ada", "--label", "laptop"])
    assert result.exit_code == 0, result.output

    key = result.output.splitlines()[-1]
    assert (
        result.stdout.strip() == key
    )  # the explanation goes to stderr: `KEY=$(flask ... keys create ...)` works
    assert key_prefix(key) is not None
    row = ApiKey.get(ApiKey.prefix == key_prefix(key))
    assert row.user.username == "ada" and row.label == "laptop" and row.status == "active"
    assert verify_key(row.key_hash, key)


def test_keys_create_for_an_unknown_user_fails(cli):
    result = cli.invoke(args=["keys", "create", "ghost"])
    assert result.exit_code != 0
    assert "no user 'ghost'" in result.output


def _text_values(model) -> list[str]:
    columns = [f for f in model._meta.sorted_fields if isinstance(f, peewee.CharField | peewee.TextField)]
    return [value for row in model.select(*columns).tuples() for value in row if isinstance(value, str)]


def test_a_new_key_is_stored_only_as_prefix_and_hash(cli, migrated_database_url):
    cli.invoke(args=["users", "create", "ada", "--role", "student", "--password", "pw"])
    key = cli.invoke(args=["keys", "create", "ada", "--label", "laptop"]).output.splitlines()[-1]
    secret = key.rsplit("_", 1)[1]

    text = [value for model in ALL_MODELS for value in _text_values(model)]
    assert any(key_prefix(key) in value for value in text)  # the check does see the rows it searches
    assert not any(secret in value for value in text)

    if migrated_database_url.startswith("sqlite:///"):
        app_database(cli.app).close()  # flush nothing pending; the WAL file is read below as well
        path = Path(migrated_database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
        assert key_prefix(key).encode() in raw
        assert secret.encode() not in raw


@pytest.mark.parametrize("command", [["seed"], ["users", "create", "x", "--role", "staff"]])
def test_commands_write_nothing_but_their_own_rows_twice(cli, command):
    cli.invoke(args=command)
    before = User.select().count()
    cli.invoke(args=command)
    assert User.select().count() == before
