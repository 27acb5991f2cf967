"""The initial schema: every table of DESIGN section 6."""

from store.models import ALL_MODELS


def upgrade(db, migrator):
    with db.bind_ctx(ALL_MODELS):
        db.create_tables(ALL_MODELS, safe=True)
