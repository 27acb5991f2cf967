"""Dashboards read rollups, not the audit table: usage per (user, model, hour) and per minute, kept by
the gateway's writer; key requests from the public page; an index for every audit-search filter."""

from store.models import KeyRequest, Request, UsageHour, UsageMinute

REQUEST_INDEXES = {
    "request_user_id_created_at": ("user_id", "created_at"),
    "request_model_created_at": ("model", "created_at"),
    "request_backend_id_created_at": ("backend_id", "created_at"),
    "request_status_created_at": ("status", "created_at"),
}


def upgrade(db, migrator):
    tables = [UsageHour, UsageMinute, KeyRequest]
    with db.bind_ctx(tables):
        db.create_tables(tables, safe=True)
    existing = {index.name for index in db.get_indexes(Request._meta.table_name)}
    for name, columns in REQUEST_INDEXES.items():
        if name not in existing:
            columns_sql = ", ".join(f"{db.quote(column)}" for column in columns)
            db.execute_sql(f"CREATE INDEX {db.quote(name)} ON {db.quote(Request._meta.table_name)} ({columns_sql})")
