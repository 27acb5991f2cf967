"""Operator commands: `flask --app admin_app db upgrade | seed | users create | keys create`."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

import migrations
from admin_app.accounts import DEV_USERS, AccountError, create_user, issue_key
from admin_app.db import app_database
from store.models import ROLES, User

db_cli = AppGroup("db", help="Database schema.")
users_cli = AppGroup("users", help="Users.")
keys_cli = AppGroup("keys", help="API keys.")


def init_app(app: Flask) -> None:
    for group in (db_cli, users_cli, keys_cli):
        app.cli.add_command(group)
    app.cli.add_command(seed_command)


def _require_current_schema() -> None:
    try:
        migrations.require_current_schema(app_database())
    except migrations.SchemaOutOfDate as error:
        raise click.ClickException(str(error)) from None


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Apply pending migrations to DATABASE_URL."""
    applied = migrations.upgrade(app_database())
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        click.echo("schema is up to date")


@click.command("seed")
@with_appcontext
def seed_command() -> None:
    """Create the development users (admin, faculty1, staff1, student1); existing ones are left alone."""
    _require_current_schema()
    for username, password, role in DEV_USERS:
        if User.get_or_none(User.username == username):
            click.echo(f"{username} already exists")
        else:
            create_user(username, role, password)
            click.echo(f"created {username} ({role})")


@users_cli.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--password", default=None, help="Lets the user log in to the dashboard; keys work without it.")
def create_user_command(name: str, role: str, password: str | None) -> None:
    """Create user NAME."""
    _require_current_schema()
    try:
        user = create_user(name, role, password)
    except AccountError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"created {user.username} ({user.role})")


@keys_cli.command("create")
@click.argument("name")
@click.option("--label", default="", help="What the key is for, shown in dashboards.")
def create_key_command(name: str, label: str) -> None:
    """Create an API key for user NAME; the key is printed once, alone on the last line."""
    _require_current_schema()
    user = User.get_or_none(User.username == name)
    if user is None:
        raise click.ClickException(f"no user {name!r} (create one with `flask --app admin_app users create`)")
    try:
        key = issue_key(user, label)
    except AccountError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"API key for {user.username}; it is shown only this once, store it now:", err=True)
    click.echo(key)
