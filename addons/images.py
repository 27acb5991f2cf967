"""Fetching http(s) image URLs for vision requests, within size, time, count and address limits.

Ollama takes only inline base64 images, and the audit log keeps every image, so the gateway
fetches URL images itself. It must not become a way into the cluster's own network, so each
fetch resolves the host name once, accepts it only if every address it resolves to is on the
public internet (`is_global`: not loopback, private, link-local, shared 100.64.0.0/10, reserved
or multicast), and connects to exactly that vetted address. Connecting to the name instead
would resolve it a second time, and a DNS answer that changes in between (rebinding) would
reach whatever the second answer names. The Host header and, for https, the TLS server name
and certificate check keep the URL's own name. Redirects are never followed.

`image_fetch_allow_internal` lifts the address check (tests fetch from loopback with it); the
fetch still goes to the one address resolved.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
from mitmproxy import ctx, exceptions

from translators.errors import GatewayError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: Address) -> bool:
    """On the public internet, including an IPv4 address carried inside an IPv6 one (mapped, 6to4, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
        if address in NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


async def resolve_once(host: str, port: int, allow_internal: bool) -> str:
    """The one address a fetch from `host` connects to: the first DNS answer, after every answer passed the
    address check. GatewayError(400) when the name does not resolve or any answer is not public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise GatewayError(400, f"image URL host {host!r} does not resolve: {exc}") from None
    answers = [info[4][0] for info in infos]
    if not answers:
        raise GatewayError(400, f"image URL host {host!r} does not resolve")
    if not allow_internal:
        for answer in answers:
            if not is_public(ipaddress.ip_address(answer.split("%", 1)[0])):
                raise GatewayError(
                    400, f"image URL host {host!r} resolves to {answer}, an internal address; send the image inline")
    return answers[0]


def check_image_url_count(urls: list[str]) -> None:
    """GatewayError(400) when a request asks the gateway to fetch more image URLs than it fetches for one request."""
    limit = ctx.options.image_fetch_max_urls
    if len(urls) > limit:
        raise GatewayError(
            400, f"{len(urls)} image URLs in one request; the gateway fetches at most {limit} "
                 "(send the others inline as data: URLs)", code="too_many_image_urls")


class ImageFetcher:
    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None

    def load(self, loader):
        loader.add_option("image_fetch_max_mb", int, 10, "Largest image the gateway fetches from a URL, in MiB.")
        loader.add_option("image_fetch_timeout_s", int, 10, "Longest the gateway waits for one image URL.")
        loader.add_option(
            "image_fetch_max_urls", int, 8,
            "Most distinct image URLs the gateway fetches for one request; a request with more gets 400 before "
            "anything is fetched (inline data: URLs do not count).",
        )
        loader.add_option(
            "image_fetch_allow_internal", bool, False,
            "Let image URLs point at loopback, private, shared (100.64.0.0/10) or link-local addresses "
            "(off: a URL whose host resolves to any address that is not public gets 400).",
        )

    def configure(self, updated):
        if "image_fetch_max_urls" in updated and ctx.options.image_fetch_max_urls < 0:
            raise exceptions.OptionsError(
                f"image_fetch_max_urls: {ctx.options.image_fetch_max_urls!r} is not a whole number ≥ 0")

    def running(self):
        # No keep-alive: a connection is made for one vetted address and one server name, and must never
        # serve another URL whose name happens to resolve to the same address.
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                        limits=httpx.Limits(max_keepalive_connections=0))

    async def done(self):
        if self.client:
            await self.client.aclose()

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """The image's bytes and media type, or GatewayError(400) saying which limit it broke."""
        try:
            parts = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise GatewayError(400, f"image URL {url!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.raw_host:
            raise GatewayError(400, f"image URL {url!r} is not an http(s) URL with a host")
        host = parts.raw_host.decode("ascii")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        limit = int(ctx.options.image_fetch_max_mb * 2**20)
        try:
            async with asyncio.timeout(ctx.options.image_fetch_timeout_s):
                address = await resolve_once(host, port, ctx.options.image_fetch_allow_internal)
                extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
                async with self.client.stream("GET", parts.copy_with(host=address),
                                              headers={"Host": parts.netloc.decode("ascii")},
                                              extensions=extensions) as response:
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
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise GatewayError(400, f"cannot fetch image URL {url!r}: {exc}") from None
        return bytes(data), media_type
