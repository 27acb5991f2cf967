"""The audit table loses its single-column indexes on user, model, backend and status.

Each of those columns leads one of the composite indexes 0004 made (`request_user_id_created_at`, ...),
which serves every lookup the single-column index served, a MariaDB foreign key's included; the single
ones only cost every audit row four more index writes (docs/benchmarks.md).
"""

REDUNDANT = ("request_user_id", "request_model", "request_backend_id", "request_status")


def upgrade(db, migrator):
    existing = {index.name for index in db.get_indexes("request")}
    for name in REDUNDANT:
        if name in existing:
            migrator.drop_index("request", name).run()
