"""Assertions the admin API tests share: the error shape, and the audit trail an action leaves."""

from __future__ import annotations

import json

from store.models import AdminAction


def assert_api_error(response, status: int, code: str | None = None) -> dict:
    """`response` is an OpenAI-shaped error with this status (and code); returns the error object."""
    assert response.status_code == status, response.data
    error = response.get_json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def actions(action: str | None = None, target: str | None = None) -> list[AdminAction]:
    query = AdminAction.select().order_by(AdminAction.id)
    if action is not None:
        query = query.where(AdminAction.action == action)
    if target is not None:
        query = query.where(AdminAction.target == target)
    return list(query)


def the_action(action: str, target: str | None = None) -> tuple[AdminAction, dict, dict]:
    """The one AdminAction of this kind (on this target), with its before and after decoded."""
    found = actions(action, target)
    assert len(found) == 1, [(a.action, a.target) for a in found]
    return found[0], json.loads(found[0].before), json.loads(found[0].after)
