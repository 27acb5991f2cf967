"""ImageFetch: fetch a request's image URLs, only once Policy has admitted it.

It sits after Policy and before Gate, so a caller without a valid key, over its rate, its
concurrency or its budget never makes the gateway fetch anything, and a fetch holds no backend
slot. Translate has already refused a request with more URLs than `image_fetch_max_urls`. A URL
that cannot be fetched is answered here in the caller's dialect; that answer ends the flow with a
response, so Policy's `response` hook gives back what admission took, as for any other answer.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.context import context_of
from addons.images import ImageFetcher
from addons.replies import reply_error
from translators.errors import GatewayError

log = logging.getLogger(__name__)


class ImageFetch:
    def __init__(self) -> None:
        self.fetcher = ImageFetcher()

    def load(self, loader):
        self.fetcher.load(loader)

    def configure(self, updated):
        self.fetcher.configure(updated)

    def running(self):
        self.fetcher.running()

    async def done(self):
        await self.fetcher.done()

    async def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.canonical is None:
            return
        canonical = context.canonical
        try:
            for url in canonical.image_urls_to_fetch():
                data, media_type = await self.fetcher.fetch(url)
                canonical.supply_image(url, data, media_type)
        except GatewayError as error:
            log.info("request %s: image refused: %s", context.request_id, error.message)
            reply_error(flow, context.dialect, error)
