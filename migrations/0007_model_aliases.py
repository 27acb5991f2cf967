"""Model aliases an admin defines (`alias → model`), resolved by the gateway on every endpoint."""

from store.models import ModelAlias


def upgrade(db, migrator):
    with db.bind_ctx([ModelAlias]):
        db.create_tables([ModelAlias], safe=True)
