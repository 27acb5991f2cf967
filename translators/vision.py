"""Images in prompts: OpenAI carries data URLs (or http URLs), Ollama carries raw base64 per message."""

from __future__ import annotations

import base64
import binascii

from translators.errors import GatewayError

# Leading bytes of the formats vision models accept; Ollama sends no media type, OpenAI needs one.
MAGIC_NUMBERS = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_media_type(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, media_type in MAGIC_NUMBERS:
        if data.startswith(magic):
            return media_type
    return None


def decode_base64_image(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GatewayError(
            422, f"{where} is not valid base64 image data ({exc})", code="invalid_image"
        ) from exc


def parse_data_url(url: str, where: str) -> tuple[str | None, bytes]:
    """`data:image/png;base64,....` → (media type, bytes)."""
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise GatewayError(
            422, f"{where} must be a base64 data URL (data:image/...;base64,...)", code="invalid_image"
        )
    data = decode_base64_image(payload, where)
    media_type = header[len("data:") : -len(";base64")] or None
    return media_type or sniff_media_type(data), data
