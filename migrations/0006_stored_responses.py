"""Answers of `POST /v1/responses` kept for `GET /v1/responses/{id}` and `previous_response_id`."""

from store.models import StoredResponse


def upgrade(db, migrator):
    with db.bind_ctx([StoredResponse]):
        db.create_tables([StoredResponse], safe=True)
