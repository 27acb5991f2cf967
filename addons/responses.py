"""Responses kept: OpenAI's `store` and `previous_response_id` on `POST /v1/responses`, and
`GET` / `DELETE /v1/responses/{id}`.

An answer is stored (unless the caller says `store: false`) once it is complete, through the
background writer. A later turn naming it as `previous_response_id` continues its conversation; the
stored row is read on a worker thread, so the event loop never waits on the database. A client's
next turn often follows at once (an agent's tool ran in milliseconds), before the writer's batch is
in: the answers this process stored last are kept in memory too, and a row another process has not
written yet is looked for again for up to `UNWRITTEN_WAIT_S`. A user only ever sees their own
responses: another user's id answers 404, exactly as an unknown one does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

import peewee
from mitmproxy import http

from addons.context import RequestContext, context_of
from addons.replies import reply_error, reply_json
from addons.routing import STORED
from addons.writer import StoreWriter, Write, writes
from store.models import StoredResponse, utcnow
from translators.errors import OPENAI, GatewayError
from translators.responses_request import ENDPOINT, with_history
from translators.responses_response import COMPLETED, output_items, response_object, stored_conversation

log = logging.getLogger(__name__)

HISTORY_KEY = "mindrouter.responses.history"  # flow.metadata: the conversation previous_response_id named
RECENT_KEPT = 1024  # answers this process stored last, kept in memory
UNWRITTEN_WAIT_S = 1.5
UNWRITTEN_POLL_S = 0.25


@dataclass(frozen=True)
class Kept:
    user: int
    response: str  # JSON text, as stored
    conversation: str


def owned_response(response_id: str, user_id: int) -> Kept | None:
    """The stored response, if `user_id` owns it (runs on a worker thread)."""
    row = StoredResponse.get_or_none((StoredResponse.response_id == response_id) & (StoredResponse.user == user_id))
    return Kept(row.user_id, row.response, row.conversation) if row else None


@writes("responses.store")
def store_response(data: dict) -> None:
    StoredResponse.insert(**data).execute()


@writes("responses.delete")
def delete_response(data: dict) -> None:
    StoredResponse.delete().where(
        (StoredResponse.response_id == data["response_id"]) & (StoredResponse.user == data["user"])).execute()


def not_found(response_id: str, what: str = "response") -> GatewayError:
    return GatewayError(404, f"{what} {response_id!r} not found", code="response_not_found")


class ResponsesStore:
    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self.recent: OrderedDict[str, Kept | None] = OrderedDict()  # None: deleted here, maybe not yet in the database

    async def find(self, response_id: str, user_id: int) -> Kept | None:
        if response_id in self.recent:
            kept = self.recent[response_id]
            return kept if kept is not None and kept.user == user_id else None
        waited = 0.0
        while (found := await self.read(response_id, user_id)) is None:
            if waited >= UNWRITTEN_WAIT_S or not response_id.startswith("resp_"):
                return None
            await asyncio.sleep(UNWRITTEN_POLL_S)
            waited += UNWRITTEN_POLL_S
        return found

    @staticmethod
    async def read(response_id: str, user_id: int) -> Kept | None:
        try:
            return await asyncio.to_thread(owned_response, response_id, user_id)
        except peewee.PeeweeException as error:
            log.warning("cannot read stored response %s: %s", response_id, error)
            raise GatewayError(503, "stored responses cannot be read just now (the database does not answer); "
                                    "try again shortly", headers={"Retry-After": "5"}) from None

    def keep(self, response_id: str, kept: Kept | None) -> None:
        self.recent[response_id] = kept
        while len(self.recent) > RECENT_KEPT:
            self.recent.popitem(last=False)

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.principal is None:
            return
        try:
            if context.route.kind == STORED:
                await self.answer_stored(flow, context)
            elif context.route.endpoint == ENDPOINT and context.canonical is not None:
                await self.continue_conversation(flow, context)
        except GatewayError as error:
            reply_error(flow, OPENAI, error)

    async def continue_conversation(self, flow: http.HTTPFlow, context: RequestContext) -> None:
        previous = context.canonical.body.get("previous_response_id")
        if not previous:
            return
        row = await self.find(previous, context.principal.user_id)
        if row is None:
            reply_error(flow, OPENAI, not_found(previous, "previous response"))
            return
        history = json.loads(row.conversation)
        with_history(context.canonical, history)
        flow.metadata[HISTORY_KEY] = history

    async def answer_stored(self, flow: http.HTTPFlow, context: RequestContext) -> None:
        response_id = flow.request.path.split("?", 1)[0].removeprefix("/v1/responses/")
        row = await self.find(response_id, context.principal.user_id)
        if row is None:
            reply_error(flow, OPENAI, not_found(response_id))
        elif flow.request.method == "DELETE":
            self.keep(response_id, None)
            self.writer.submit(Write("responses.delete", {"response_id": response_id, "user": context.principal.user_id}))
            reply_json(flow, 200, {"id": response_id, "object": "response.deleted", "deleted": True})
        else:
            reply_json(flow, 200, json.loads(row.response))

    def response(self, flow: http.HTTPFlow) -> None:
        """Keep a complete answer (never an error, a cut stream or one the caller asked not to store)."""
        context = context_of(flow)
        if (context is None or context.route.endpoint != ENDPOINT or context.translator is None
                or context.canonical is None or context.principal is None):
            return
        translator, canonical = context.translator, context.canonical
        if (flow.response.status_code != 200 or context.error or translator.failed or translator.finish_reason is None
                or canonical.body.get("store") is False):
            return
        response_id = f"resp_{context.request_id}"
        output = output_items(response_id, translator.output_text, translator.thinking_text, translator.tool_calls)
        response = response_object(canonical, response_id, translator.created, COMPLETED, output,
                                   translator.usage, translator.finish_reason)
        conversation = stored_conversation(flow.metadata.get(HISTORY_KEY, []), canonical, output)
        row = {"response_id": response_id, "user": context.principal.user_id, "model": canonical.requested_model,
               "created_at": utcnow(), "response": json.dumps(response), "conversation": json.dumps(conversation)}
        self.keep(response_id, Kept(row["user"], row["response"], row["conversation"]))
        self.writer.submit(Write("responses.store", row, size=len(row["response"]) + len(row["conversation"])))
