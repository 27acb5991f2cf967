"""Request bodies keep the answer's text assembled from the stream, so audit search finds words that a
stream split across events."""

from playhouse.migrate import migrate

from store.models import LongTextField


def upgrade(db, migrator):
    if "response_text" not in {column.name for column in db.get_columns("request_body")}:
        migrate(migrator.add_column("request_body", "response_text", LongTextField(default="")))
