"""Images: OpenAI data URLs ⇄ Ollama raw base64, fetched URLs, and the bytes the audit log stores."""

import base64
import json

import pytest

from translators.errors import GatewayError
from translators.pipeline import build_backend_request, parse_client_request
from translators.vision import sniff_media_type

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF"
PNG_B64 = base64.b64encode(PNG).decode()
JPEG_B64 = base64.b64encode(JPEG).decode()


def parse(path: str, body: dict):
    return parse_client_request(path, json.dumps(body).encode())


def backend(req, engine: str) -> dict:
    return json.loads(build_backend_request(req, engine, "req-1")[1])


def openai_vision(url: str) -> dict:
    # Content parts as in the vision guide of the OpenAI API reference.
    return {
        "model": "llava",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                ],
            }
        ],
    }


def test_openai_data_url_reaches_ollama_as_raw_base64_on_the_message():
    req = parse("/v1/chat/completions", openai_vision(f"data:image/png;base64,{PNG_B64}"))
    assert backend(req, "ollama")["messages"] == [
        {"role": "user", "content": "What is in this image?", "images": [PNG_B64]}
    ]


def test_decoded_images_are_exposed_for_the_audit_log():
    req = parse("/v1/chat/completions", openai_vision(f"data:image/jpeg;base64,{JPEG_B64}"))
    assert [(image.data, image.media_type) for image in req.images] == [(JPEG, "image/jpeg")]
    ollama_req = parse(
        "/api/chat", {"model": "llava", "messages": [{"role": "user", "content": "x", "images": [PNG_B64]}]}
    )
    assert [(image.data, image.media_type) for image in ollama_req.images] == [(PNG, "image/png")]


def test_ollama_images_reach_vllm_as_data_url_parts_with_a_sniffed_media_type():
    req = parse(
        "/api/chat",
        {
            "model": "llava",
            "messages": [{"role": "user", "content": "what is in this image?", "images": [JPEG_B64]}],
        },
    )
    assert backend(req, "vllm")["messages"][0]["content"] == [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG_B64}"}},
    ]


def test_generate_images_become_parts_of_the_user_message_for_vllm():
    req = parse(
        "/api/generate",
        {"model": "llava", "prompt": "What is in this picture?", "images": [PNG_B64], "stream": False},
    )
    message = backend(req, "vllm")["messages"][0]
    assert message["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PNG_B64}"},
    }


def test_remote_images_are_listed_for_fetching_and_ollama_refuses_them_unfetched():
    req = parse("/v1/chat/completions", openai_vision("https://example.com/cat.png"))
    assert req.image_urls_to_fetch() == ["https://example.com/cat.png"]
    with pytest.raises(GatewayError) as caught:
        build_backend_request(req, "ollama", "req-1")
    assert caught.value.status == 422


def test_fetched_bytes_replace_the_url_for_either_engine():
    req = parse("/v1/chat/completions", openai_vision("https://example.com/cat.png"))
    req.supply_image("https://example.com/cat.png", PNG)
    assert req.image_urls_to_fetch() == []
    assert req.images[0].media_type == "image/png"
    assert backend(req, "ollama")["messages"][0]["images"] == [PNG_B64]
    vllm_part = backend(req, "vllm")["messages"][0]["content"][1]
    assert vllm_part == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"},
    }
    assert req.body["messages"][0]["content"][1]["image_url"]["url"] == "https://example.com/cat.png"


def test_unfetched_urls_reach_vllm_unchanged():
    req = parse("/v1/chat/completions", openai_vision("https://example.com/cat.png"))
    assert (
        backend(req, "vllm")["messages"][0]["content"][1]["image_url"]["url"] == "https://example.com/cat.png"
    )


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (b"GIF89a...", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"plain", None),
    ],
)
def test_media_types_are_sniffed_from_the_bytes(data, media_type):
    assert sniff_media_type(data) == media_type


def test_images_count_in_the_prompt_estimate():
    with_image = parse("/v1/chat/completions", openai_vision(f"data:image/png;base64,{PNG_B64}"))
    without = parse(
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "What is in this image?"}]},
    )
    assert with_image.estimated_prompt_tokens > without.estimated_prompt_tokens + 500
