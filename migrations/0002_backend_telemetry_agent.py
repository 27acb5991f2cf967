"""Backends can name the GPU node agent that reports their GPUs (telemetry_agent) and which GPUs are theirs;
an admin can ask the gateways to re-examine a backend now (refresh_requested_at)."""

import peewee
from playhouse.migrate import migrate


def upgrade(db, migrator):
    columns = {column.name for column in db.get_columns("backend")}
    operations = []
    if "telemetry_url" not in columns:
        operations.append(migrator.add_column("backend", "telemetry_url", peewee.CharField(max_length=512, null=True)))
    if "gpu_indices" not in columns:
        operations.append(migrator.add_column("backend", "gpu_indices", peewee.CharField(max_length=64, default="")))
    if "refresh_requested_at" not in columns:
        operations.append(migrator.add_column("backend", "refresh_requested_at", peewee.DateTimeField(null=True)))
    migrate(*operations)
