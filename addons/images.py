"""Fetching http(s) image URLs for vision requests, within size, time and content-type limits.

Ollama takes only inline base64 images, and the audit log keeps every image, so the gateway
fetches URL images itself. It refuses loopback, private and link-local addresses unless told
otherwise, so a caller cannot make the gateway read the cluster's internal services.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx
from mitmproxy import ctx

from translators.errors import GatewayError


async def is_internal(host: str) -> bool:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    return any(a.is_private or a.is_loopback or a.is_link_local or a.is_reserved for a in addresses)


class ImageFetcher:
    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None

    def load(self, loader):
        loader.add_option("image_fetch_max_mb", int, 10, "Largest image the gateway fetches from a URL, in MiB.")
        loader.add_option("image_fetch_timeout_s", int, 10, "Longest the gateway waits for one image URL.")
        loader.add_option(
            "image_fetch_allow_internal", bool, False,
            "Let image URLs point at loopback, private or link-local addresses (off: such URLs get 400).",
        )

    def running(self):
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def done(self):
        if self.client:
            await self.client.aclose()

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """The image's bytes and media type, or GatewayError(400) saying which limit it broke."""
        host = urlsplit(url).hostname or ""
        try:
            if not ctx.options.image_fetch_allow_internal and await is_internal(host):
                raise GatewayError(400, f"image URL {url!r} points at an internal address; send the image inline")
            limit = int(ctx.options.image_fetch_max_mb * 2**20)
            async with asyncio.timeout(ctx.options.image_fetch_timeout_s):
                async with self.client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise GatewayError(400, f"image URL {url!r} answered {response.status_code}")
                    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
                    if not media_type.startswith("image/"):
                        raise GatewayError(400, f"image URL {url!r} is {media_type or 'untyped'}, not an image")
                    data = bytearray()
                    async for piece in response.aiter_bytes():
                        data += piece
                        if len(data) > limit:
                            raise GatewayError(413, f"image at {url!r} exceeds {ctx.options.image_fetch_max_mb:g} MiB")
        except TimeoutError:
            raise GatewayError(400, f"image URL {url!r} did not answer within {ctx.options.image_fetch_timeout_s:g} s") from None
        except (httpx.HTTPError, OSError) as exc:
            raise GatewayError(400, f"cannot fetch image URL {url!r}: {exc}") from None
        return bytes(data), media_type
