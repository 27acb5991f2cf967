"""Model aliases (`alias → model`): defining, re-pointing and removing one, for the admin API and console.

Gateways re-read the table with the backends (every `backend_poll_s`), so a change reaches callers
within that period, with nothing for a client to change. An alias names a model, never another alias.
"""

from __future__ import annotations

import re

from admin_app.admin_actions import record_action
from admin_app.api_values import FieldError, iso_utc, text
from store.db import database
from store.models import ModelAlias, User, utcnow

MAX_NAME = 256
# What a client can type as a model name in either dialect: no spaces, no control characters.
ALIAS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


def alias_json(row: ModelAlias) -> dict:
    return {"alias": row.alias, "model": row.model, "updated_at": iso_utc(row.updated_at)}


def all_aliases() -> list[ModelAlias]:
    return list(ModelAlias.select().order_by(ModelAlias.alias))


def set_alias(actor: User | None, alias: str, model: object) -> tuple[ModelAlias, bool]:
    """Define `alias` or re-point it at `model`; (the row, whether it is new). FieldError when refused."""
    if len(alias) > MAX_NAME or not ALIAS_NAME.match(alias):
        raise FieldError(f"alias {alias!r} must start with a letter or digit and hold only letters, digits and "
                         f"._:/@+- (at most {MAX_NAME} characters)", param="alias")
    model = text("model", model, MAX_NAME)
    if model == alias:
        raise FieldError(f"alias {alias!r} cannot point at itself", param="model")
    if ModelAlias.get_or_none(ModelAlias.alias == model) is not None:
        raise FieldError(f"{model!r} is itself an alias: point {alias!r} at a model", param="model")
    if (pointing := ModelAlias.get_or_none(ModelAlias.model == alias)) is not None:
        raise FieldError(f"alias {pointing.alias!r} points at {alias!r}: an alias names a model, not another alias",
                         param="alias")
    with database.atomic():
        row = ModelAlias.get_or_none(ModelAlias.alias == alias)
        before = alias_json(row) if row else None
        if row is None:
            row = ModelAlias.create(alias=alias, model=model)
        else:
            ModelAlias.update(model=model, updated_at=utcnow()).where(ModelAlias.id == row.id).execute()
            row = ModelAlias.get_by_id(row.id)
        record_action(actor, "alias.set", f"alias:{alias}", before=before, after=alias_json(row))
    return row, before is None


def remove_alias(actor: User | None, alias: str) -> bool:
    """Remove `alias`; False when there is none."""
    with database.atomic():
        row = ModelAlias.get_or_none(ModelAlias.alias == alias)
        if row is None:
            return False
        record_action(actor, "alias.delete", f"alias:{alias}", before=alias_json(row))
        row.delete_instance()
    return True
