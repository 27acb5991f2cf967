"""The writer keeps the usage rollups with each audit row, in the same transaction, on both databases."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

import migrations
from addons.record import write_audit, write_audits
from admin_app.db import app_database
from store.models import ApiKey, Request, RequestBody, UsageHour, UsageMinute


def one_by_one(audits: list[dict]) -> None:
    for audit in audits:
        write_audit(audit)


def _audit(request_id: str, user_id: int | None, model: str, at: dt.datetime, status: int = 200,
           prompt: int = 10, completion: int = 20) -> dict:
    row = {
        "request_id": request_id, "user": user_id, "api_key": None, "endpoint": "/v1/chat/completions",
        "client_dialect": "openai", "backend_dialect": None, "model": model, "backend": None, "status": status,
        "stream": False, "queue_ms": 5.0, "ttft_ms": 7.0, "total_ms": 100.0, "prompt_tokens": prompt,
        "completion_tokens": completion, "client_address": "127.0.0.1", "error": "", "created_at": at,
    }
    return {"row": row, "body": b"{}", "delivered": b"{}", "images": [], "media_types": [], "answer_text": "",
            "validation": "", "artifact_root": "unused"}


@pytest.mark.parametrize("write", [one_by_one, write_audits], ids=["one by one", "together"])
def test_finished_requests_add_up_per_user_model_and_hour(app, make_user, write):
    ada = make_user("ada")
    at = dt.datetime(2026, 3, 1, 10, 15, 30)
    with app_database(app).atomic():
        write([_audit("r1", ada.id, "llama3.2", at),
               _audit("r2", ada.id, "llama3.2", at + dt.timedelta(minutes=20), status=503, prompt=1, completion=0),
               _audit("r3", ada.id, "qwen2.5", at),
               _audit("r4", None, "llama3.2", at + dt.timedelta(hours=1))])

    assert Request.select().count() == 4
    rows = {(r.user_id, r.model, r.hour): r for r in UsageHour.select()}
    llama = rows[(ada.id, "llama3.2", dt.datetime(2026, 3, 1, 10))]
    assert (llama.requests, llama.errors, llama.prompt_tokens, llama.completion_tokens) == (2, 1, 11, 20)
    assert llama.total_ms == 200.0
    assert rows[(ada.id, "qwen2.5", dt.datetime(2026, 3, 1, 10))].requests == 1
    assert rows[(0, "llama3.2", dt.datetime(2026, 3, 1, 11))].requests == 1
    minutes = {r.minute: r.requests for r in UsageMinute.select()}
    assert minutes == {dt.datetime(2026, 3, 1, 10, 15): 2, dt.datetime(2026, 3, 1, 10, 35): 1,
                       dt.datetime(2026, 3, 1, 11, 15): 1}


def test_a_run_of_audits_takes_a_few_statements_whatever_its_length(app, make_user, caplog):
    """The writer's batches: one INSERT per table, one upsert per rollup row and one update per key."""
    ada = make_user("ada")
    key = ApiKey.create(user=ada, prefix="batchkey", key_hash="x", label="batch")
    at = dt.datetime(2026, 3, 1, 10, 15)  # 50 requests a second apart, all in one minute
    audits = [_audit(f"b{n}", ada.id, "llama3.2", at + dt.timedelta(seconds=n)) for n in range(50)]
    for audit in audits:
        audit["row"]["api_key"] = key.id
    with caplog.at_level(logging.DEBUG, logger="peewee"), app_database(app).atomic():
        write_audits(audits)
    statements = [r for r in caplog.records if r.name == "peewee" and isinstance(r.msg, tuple)]
    assert len(statements) <= 6  # request, its ids, bodies, the hour, the minute, the key
    assert RequestBody.select().join(Request).where(Request.request_id.startswith("b")).count() == 50
    assert ApiKey.get_by_id(key.id).request_count == 50 and ApiKey.get_by_id(key.id).last_used_at == audits[-1]["row"]["created_at"]


def test_the_dashboards_migration_runs_twice_without_change(app):
    db = app_database(app)
    module = {m.version: m for m in migrations.available_migrations()}[4].module
    with db.atomic():
        module.upgrade(db, migrations.migrator_for(db))
    names = {index.name for index in db.get_indexes("request")}
    assert {"request_user_id_created_at", "request_status_created_at"} <= names
    assert "usage_hour_user_id_hour" in {index.name for index in db.get_indexes("usage_hour")}
    assert {"usage_hour", "usage_minute", "key_request"} <= set(db.get_tables())
