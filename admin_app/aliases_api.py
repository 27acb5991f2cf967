"""The admin API for model aliases: `alias → model`, resolved by the gateways on every endpoint.

    GET    /admin/aliases                 every alias and the model it points at
    PUT    /admin/aliases/<alias>         {"model": ...}: define the alias, or re-point it (201 / 200)
    DELETE /admin/aliases/<alias>         remove it

Gateways re-read the table with the backends (every `backend_poll_s`), so a change reaches callers
within that period, with nothing for a client to change.
"""

from __future__ import annotations

import re

from flask import g, jsonify

from admin_app.admin_actions import record_action
from admin_app.admin_api import admin_required, api_error, json_api_blueprint, json_body
from admin_app.api_values import FieldError, check_fields, iso_utc, required, text
from store.db import database
from store.models import ModelAlias, utcnow

bp = json_api_blueprint("aliases_api", __name__)
MAX_NAME = 256
# What a client can type as a model name in either dialect: no spaces, no control characters.
ALIAS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


def alias_json(row: ModelAlias) -> dict:
    return {"alias": row.alias, "model": row.model, "updated_at": iso_utc(row.updated_at)}


def checked_alias(alias: str) -> str:
    if len(alias) > MAX_NAME or not ALIAS_NAME.match(alias):
        raise FieldError(f"alias {alias!r} must start with a letter or digit and hold only letters, digits and "
                         f"._:/@+- (at most {MAX_NAME} characters)", param="alias")
    return alias


@bp.get("/aliases")
@admin_required
def list_aliases():
    return jsonify({"aliases": [alias_json(row) for row in ModelAlias.select().order_by(ModelAlias.alias)]})


@bp.put("/aliases/<path:alias>")
@admin_required
def put_alias(alias: str):
    """Define `alias`, or re-point it at another model."""
    alias = checked_alias(alias)
    body = check_fields(json_body(shape='{"model": "..."}'), ("model",), '{"model": "..."}')
    model = text("model", required(body, "model"), MAX_NAME)
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
        record_action(g.actor, "alias.set", f"alias:{alias}", before=before, after=alias_json(row))
    return jsonify(alias_json(row)), 200 if before else 201


@bp.delete("/aliases/<path:alias>")
@admin_required
def delete_alias(alias: str):
    with database.atomic():
        row = ModelAlias.get_or_none(ModelAlias.alias == alias)
        if row is None:
            return api_error(404, f"no alias {alias!r} (GET /admin/aliases lists them)", "not_found_error",
                             "alias_not_found")
        record_action(g.actor, "alias.delete", f"alias:{alias}", before=alias_json(row))
        row.delete_instance()
    return jsonify({"alias": alias, "deleted": True})
