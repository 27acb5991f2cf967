"""Operator commands: `flask --app admin_app db upgrade | seed | users create | keys create | audit prune`."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

import migrations
from admin_app.accounts import DEV_USERS, AccountError, create_user, issue_key
from admin_app.admin_actions import record_action
from admin_app.api_values import iso_utc
from admin_app.db import app_database
from admin_app.retention import DEFAULT_BATCH_SIZE, count_prunable, parse_age, prune_audit
from store.models import ROLES, User, utcnow

db_cli = AppGroup("db", help="Database schema.")
users_cli = AppGroup("users", help="Users.")
keys_cli = AppGroup("keys", help="API keys.")
audit_cli = AppGroup("audit", help="The audit log of requests.")


def init_app(app: Flask) -> None:
    for group in (db_cli, users_cli, keys_cli, audit_cli):
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


def _age(_ctx, _param, value: str):
    try:
        return value, parse_age(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@audit_cli.command("prune")
@click.option(
    "--older-than",
    "age",
    required=True,
    callback=_age,
    help="Remove requests older than this: days (365d) or hours (48h).",
)
@click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
def prune_command(age: tuple, batch_size: int, dry_run: bool) -> None:
    """Remove old requests, their bodies and artifact links, and every artifact (and its file) that
    no remaining request uses."""
    _require_current_schema()
    text, delta = age
    cutoff = utcnow() - delta
    if dry_run:
        counts = count_prunable(cutoff)
        click.echo(
            f"would remove {counts.requests} requests, {counts.bodies} bodies, {counts.artifact_links} "
            f"artifact links and {counts.artifacts} artifacts (created before {iso_utc(cutoff)}), and "
            f"{counts.stored_responses} stored responses"
        )
        return
    counts = prune_audit(cutoff, current_app.config["ARTIFACT_STORAGE_PATH"], batch_size)
    record_action(
        None,
        "audit.prune",
        "requests",
        before={"older_than": text, "cutoff": iso_utc(cutoff)},
        after=counts.as_dict(),
    )
    click.echo(
        f"removed {counts.requests} requests, {counts.bodies} bodies, {counts.artifact_links} artifact links "
        f"and {counts.artifacts} artifacts ({counts.files} files; {counts.missing_files} already missing) "
        f"created before {iso_utc(cutoff)}, and {counts.stored_responses} stored responses"
    )
