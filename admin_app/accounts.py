"""Users and their API keys: every change the CLI, the admin API and the dashboard make to them.

Each change writes one `AdminAction` with the state before and after (`user_state`, `key_state`:
never a hash). Changes that depend on the current state (revoking, rotating) are conditional
updates, so two admins acting at once cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
import re

import peewee

from admin_app.admin_actions import record_action
from admin_app.api_values import iso_utc
from admin_app.quotas import base_budget, shift_current_budget
from store.api_keys import generate_key, hash_key, hash_password
from store.db import database
from store.models import ROLES, ApiKey, User, utcnow

# Development users that `flask --app admin_app seed` creates (DESIGN section 3).
DEV_USERS = (
    ("admin", "admin123", "admin"),
    ("faculty1", "faculty123", "faculty"),
    ("staff1", "staff123", "staff"),
    ("student1", "student123", "student"),
)

# What an admin may change on a user (POST /admin/users/<id>); None clears an override.
USER_SETTINGS = (
    "role",
    "weight_override",
    "token_budget_override",
    "rpm_override",
    "max_concurrent_override",
    "max_queued_override",
    "active",
)


# Names appear in URLs (`?user=`), logs and the dashboard: keep them plain.
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


class AccountError(ValueError):
    pass


class AccountConflict(AccountError):
    """The change clashes with what exists (a taken name, a revoked key): answered 409."""


def user_state(user: User) -> dict:
    """A user as the admin API shows it and the audit trail records it."""
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "active": user.active,
        "email": user.email,
        "weight": user.weight,
        "weight_override": user.weight_override,
        "token_budget_override": user.token_budget_override,
        "rpm_override": user.rpm_override,
        "max_concurrent_override": user.max_concurrent_override,
        "max_queued_override": user.max_queued_override,
        "can_log_in": bool(user.password_hash),
        "created_at": iso_utc(user.created_at),
    }


def key_expired(key: ApiKey, now: dt.datetime | None = None) -> bool:
    return key.expires_at is not None and key.expires_at <= (now or utcnow())


def key_state(key: ApiKey) -> dict:
    """A key as the admin API shows it: its prefix, never its hash."""
    return {
        "id": key.id,
        "user_id": key.user_id,
        "user": key.user.username,
        "prefix": key.prefix,
        "hint": f"mr_{key.prefix}_…",
        "label": key.label,
        "status": key.status,
        "expired": key_expired(key),
        "expires_at": iso_utc(key.expires_at),
        "rpm_override": key.rpm_override,
        "last_used_at": iso_utc(key.last_used_at),
        "request_count": key.request_count,
        "created_at": iso_utc(key.created_at),
        "revoked_at": iso_utc(key.revoked_at),
    }


def keys_query() -> peewee.Select:
    """Keys with their user joined, newest first."""
    return ApiKey.select(ApiKey, User).join(User).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())


def create_user(username: str, role: str, password: str | None = None, actor: User | None = None) -> User:
    """A new active user; without a password the user can only use API keys, not log in."""
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (use one of: {', '.join(ROLES)})")
    if not username or len(username) > User.username.max_length:
        raise AccountError(f"username must be 1 to {User.username.max_length} characters")
    if not USERNAME_PATTERN.match(username):
        raise AccountError(
            f"username {username!r} may hold only letters, digits and . _ @ - (and must start with a letter "
            "or digit)"
        )
    if User.get_or_none(User.username == username):
        raise AccountConflict(f"user {username!r} already exists")
    try:
        with database.atomic():
            user = User.create(
                username=username, role=role, password_hash=hash_password(password) if password else None
            )
            record_action(actor, "user.create", f"user:{user.id}", after=user_state(user))
    except peewee.IntegrityError:  # created by someone else between our check and our insert
        raise AccountConflict(f"user {username!r} already exists") from None
    return user


def update_user(user: User, changes: dict, actor: User | None, default_budget: int) -> User:
    """Apply checked `changes` (a subset of USER_SETTINGS). A change of role or budget override also
    moves this month's quota row by the difference, so top-ups already approved are kept."""
    unknown = set(changes) - set(USER_SETTINGS)
    if unknown:
        raise AccountError(f"cannot change {sorted(unknown)[0]!r} (changeable: {', '.join(USER_SETTINGS)})")
    with database.atomic():
        current = User.get_by_id(user.id)
        before = user_state(current)
        if _removes_last_admin(current, changes):
            raise AccountConflict(
                f"user {current.username!r} is the last active admin; make another user admin first"
            )
        User.update(**changes).where(User.id == current.id).execute()
        updated = User.get_by_id(current.id)
        after = user_state(updated)
        delta = base_budget(updated, default_budget) - base_budget(current, default_budget)
        shifted = shift_current_budget(updated, delta) if delta else None
        if shifted is not None:
            before["current_quota_budget"], after["current_quota_budget"] = shifted
        record_action(actor, "user.update", f"user:{current.id}", before=before, after=after)
    return updated


def _removes_last_admin(user: User, changes: dict) -> bool:
    if user.role != "admin" or not user.active:
        return False
    if changes.get("role", "admin") == "admin" and changes.get("active", True):
        return False
    others = User.select().where((User.role == "admin") & (User.active == True) & (User.id != user.id))  # noqa: E712
    return not others.exists()


def create_key(
    user: User,
    label: str = "",
    actor: User | None = None,
    expires_at: dt.datetime | None = None,
    rpm_override: int | None = None,
    replaces: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """A new API key row and the key itself, which is returned once: only its prefix and Argon2 hash
    are stored. `replaces` names the key a rotation revokes, for the audit trail."""
    for _ in range(5):
        key, prefix = generate_key()
        try:
            with database.atomic():
                row = ApiKey.create(
                    user=user,
                    prefix=prefix,
                    key_hash=hash_key(key),
                    label=label,
                    expires_at=expires_at,
                    rpm_override=rpm_override,
                )
        except peewee.IntegrityError:  # prefix already taken: 36^8 makes this rare, retrying makes it moot
            continue
        row = keys_query().where(ApiKey.id == row.id).get()
        after = key_state(row)
        if replaces is not None:
            after["replaces"] = replaces.id
        record_action(actor, "key.create", f"key:{row.id}", after=after)
        return row, key
    raise AccountError("could not find a free key prefix after 5 tries")


def issue_key(user: User, label: str = "", actor: User | None = None) -> str:
    """A new API key for `user` (the CLI's `keys create`), returned once."""
    return create_key(user, label, actor)[1]


def _reload(key: ApiKey) -> ApiKey:
    return keys_query().where(ApiKey.id == key.id).get()


def _refuse_revoked(key: ApiKey, doing: str) -> None:
    if key.status == "revoked":
        raise AccountConflict(f"key {key.id} (mr_{key.prefix}_…) is revoked; cannot {doing} it")


def relabel_key(key: ApiKey, label: str, actor: User | None) -> ApiKey:
    with database.atomic():
        before = key_state(_reload(key))
        ApiKey.update(label=label).where(ApiKey.id == key.id).execute()
        key = _reload(key)
        record_action(actor, "key.label", f"key:{key.id}", before=before, after=key_state(key))
    return key


def revoke_key(key: ApiKey, actor: User | None) -> ApiKey:
    """Revoke an active key; the gateway and the admin API stop accepting it within seconds."""
    with database.atomic():
        before = key_state(_reload(key))
        revoked = (
            ApiKey.update(status="revoked", revoked_at=utcnow())
            .where((ApiKey.id == key.id) & (ApiKey.status == "active"))
            .execute()
        )
        if not revoked:
            raise AccountConflict(f"key {key.id} (mr_{key.prefix}_…) is already revoked")
        key = _reload(key)
        record_action(actor, "key.revoke", f"key:{key.id}", before=before, after=key_state(key))
    return key


def set_key_expiry(key: ApiKey, expires_at: dt.datetime | None, actor: User | None) -> ApiKey:
    """Set when the key stops working (a past time: at once; None: never)."""
    with database.atomic():
        current = _reload(key)
        _refuse_revoked(current, "change the expiry of")
        before = key_state(current)
        ApiKey.update(expires_at=expires_at).where(ApiKey.id == key.id).execute()
        key = _reload(key)
        record_action(actor, "key.expire", f"key:{key.id}", before=before, after=key_state(key))
    return key


def rotate_key(key: ApiKey, actor: User | None) -> tuple[ApiKey, str]:
    """Revoke `key` and issue a new one for the same user with the same label, expiry and rate limit.
    Both happen or neither; the new key is returned once."""
    with database.atomic():
        current = _reload(key)
        _refuse_revoked(current, "rotate")
        if key_expired(current):
            raise AccountConflict(
                f"key {current.id} (mr_{current.prefix}_…) expired at {iso_utc(current.expires_at)}; "
                "set a new expiry first (POST /admin/keys/<id>/expire) or create a new key"
            )
        before = key_state(current)
        revoked = (
            ApiKey.update(status="revoked", revoked_at=utcnow())
            .where((ApiKey.id == current.id) & (ApiKey.status == "active"))
            .execute()
        )
        if not revoked:
            raise AccountConflict(f"key {current.id} (mr_{current.prefix}_…) is already revoked")
        new_row, new_key = create_key(
            current.user,
            current.label,
            actor,
            expires_at=current.expires_at,
            rpm_override=current.rpm_override,
            replaces=current,
        )
        after = key_state(_reload(current))
        after["replaced_by"] = new_row.id
        record_action(actor, "key.rotate", f"key:{current.id}", before=before, after=after)
    return new_row, new_key
