"""The admin audit trail: one `AdminAction` row for every change made through the admin app or its CLI."""

from __future__ import annotations

import json

from store.models import AdminAction, User


def record_action(
    actor: User | None, action: str, target: str, before: dict | None = None, after: dict | None = None
) -> AdminAction:
    """`actor` is None for the command line, where there is no logged-in user."""
    return AdminAction.create(
        actor=actor,
        action=action,
        target=target,
        before=json.dumps(before or {}, sort_keys=True, default=str),
        after=json.dumps(after or {}, sort_keys=True, default=str),
    )
