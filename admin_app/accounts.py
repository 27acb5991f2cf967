"""Users and their API keys: creation shared by the CLI and (later) the admin pages."""

from __future__ import annotations

import peewee

from admin_app.admin_actions import record_action
from store.api_keys import generate_key, hash_key, hash_password
from store.models import ROLES, ApiKey, User

# Development users that `flask --app admin_app seed` creates (DESIGN section 3).
DEV_USERS = (
    ("admin", "admin123", "admin"),
    ("faculty1", "faculty123", "faculty"),
    ("staff1", "staff123", "staff"),
    ("student1", "student123", "student"),
)


class AccountError(ValueError):
    pass


def create_user(username: str, role: str, password: str | None = None, actor: User | None = None) -> User:
    """A new active user; without a password the user can only use API keys, not log in."""
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (use one of: {', '.join(ROLES)})")
    if not username or len(username) > User.username.max_length:
        raise AccountError(f"username must be 1 to {User.username.max_length} characters")
    if User.get_or_none(User.username == username):
        raise AccountError(f"user {username!r} already exists")
    user = User.create(
        username=username, role=role, password_hash=hash_password(password) if password else None
    )
    record_action(actor, "user.create", f"user:{user.id}", after={"username": username, "role": role})
    return user


def issue_key(user: User, label: str = "", actor: User | None = None) -> str:
    """A new API key for `user`. The key is returned once; only its prefix and Argon2 hash are stored."""
    for _ in range(5):
        key, prefix = generate_key()
        try:
            row = ApiKey.create(user=user, prefix=prefix, key_hash=hash_key(key), label=label)
        except peewee.IntegrityError:  # prefix already taken: 36^8 makes this rare, retrying makes it moot
            continue
        record_action(
            actor,
            "key.create",
            f"key:{row.id}",
            after={"user": user.username, "prefix": prefix, "label": label},
        )
        return key
    raise AccountError("could not find a free key prefix after 5 tries")
