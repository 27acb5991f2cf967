"""Users get an override of their role's bound on waiting requests (max_queued_per_user), beside the
running cap's, so an admin can let one batch user queue more (or fewer) requests than the role."""

import peewee
from playhouse.migrate import migrate


def upgrade(db, migrator):
    if "max_queued_override" not in {column.name for column in db.get_columns("user")}:
        migrate(migrator.add_column("user", "max_queued_override", peewee.IntegerField(null=True)))
