"""The admin API for model aliases (admin_app/aliases.py):

    GET    /admin/aliases                 every alias and the model it points at
    PUT    /admin/aliases/<alias>         {"model": ...}: define the alias, or re-point it (201 / 200)
    DELETE /admin/aliases/<alias>         remove it
"""

from __future__ import annotations

from flask import g, jsonify

from admin_app.admin_api import admin_required, api_error, json_api_blueprint, json_body
from admin_app.aliases import alias_json, all_aliases, remove_alias, set_alias
from admin_app.api_values import check_fields, required

bp = json_api_blueprint("aliases_api", __name__)
SHAPE = '{"model": "..."}'


@bp.get("/aliases")
@admin_required
def list_aliases():
    return jsonify({"aliases": [alias_json(row) for row in all_aliases()]})


@bp.put("/aliases/<path:alias>")
@admin_required
def put_alias(alias: str):
    """Define `alias`, or re-point it at another model."""
    body = check_fields(json_body(shape=SHAPE), ("model",), SHAPE)
    row, created = set_alias(g.actor, alias, required(body, "model"))
    return jsonify(alias_json(row)), 201 if created else 200


@bp.delete("/aliases/<path:alias>")
@admin_required
def delete_alias(alias: str):
    if not remove_alias(g.actor, alias):
        return api_error(404, f"no alias {alias!r} (GET /admin/aliases lists them)", "not_found_error",
                         "alias_not_found")
    return jsonify({"alias": alias, "deleted": True})
