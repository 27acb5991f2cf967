"""Dashboards read rollups, not the audit table: usage per (user, model, hour) and per minute, kept by
the gateway's writer; key requests from the public page; an index for every audit-search filter."""

from store.models import KeyRequest, UsageHour, UsageMinute

INDEXES = {
    "request": {
        "request_user_id_created_at": ("user_id", "created_at"),
        "request_model_created_at": ("model", "created_at"),
        "request_backend_id_created_at": ("backend_id", "created_at"),
        "request_status_created_at": ("status", "created_at"),
    },
    "usage_hour": {"usage_hour_user_id_hour": ("user_id", "hour")},
}


def upgrade(db, migrator):
    tables = [UsageHour, UsageMinute, KeyRequest]
    with db.bind_ctx(tables):
        db.create_tables(tables, safe=True)
    for table, indexes in INDEXES.items():
        existing = {index.name for index in db.get_indexes(table)}
        for name, columns in indexes.items():
            if name not in existing:
                migrator.add_index(table, columns).run()  # named `<table>_<columns>`, as `name` is
