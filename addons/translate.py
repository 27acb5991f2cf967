"""Translate: parse the caller's body once into the canonical request every later addon reads."""

from __future__ import annotations

from mitmproxy import ctx, http

from addons.context import context_of
from addons.images import ImageFetcher
from addons.replies import reply_error
from translators.errors import GatewayError
from translators.pipeline import parse_client_request


class Translate:
    """Client body → CanonicalRequest, with http(s) image URLs fetched; bad input answered before queueing."""

    def __init__(self) -> None:
        self.images = ImageFetcher()

    def load(self, loader):
        loader.add_option(
            "max_request_body_mb", float, 32.0,
            "Largest request body accepted, in MiB (inline images count); larger bodies get 413.",
        )
        self.images.load(loader)

    def running(self):
        self.images.running()

    async def done(self):
        await self.images.done()

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.route.kind != "inference":
            return
        context.client_body = flow.request.raw_content or b""
        try:
            canonical = parse_client_request(
                context.route.endpoint, context.client_body, int(ctx.options.max_request_body_mb * 2**20)
            )
            for url in canonical.image_urls_to_fetch():
                data, media_type = await self.images.fetch(url)
                canonical.supply_image(url, data, media_type)
        except GatewayError as error:
            reply_error(flow, context.dialect, error)
            return
        context.canonical = canonical
        context.model, context.stream = canonical.model, canonical.stream
