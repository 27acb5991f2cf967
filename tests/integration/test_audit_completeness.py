"""After 1000 mixed requests and a SIGTERM, the audit log holds every one of them, bodies, images and all."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
from pathlib import Path

import httpx

from store import init_database
from store.models import Artifact, Request, RequestArtifact, RequestBody
from tests.support.cluster import NO_LIMITS, start_cluster

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
MARKER = "audit-complete"


def node_tokens(url: str) -> tuple[int, int]:
    counted = httpx.get(f"{url}/_sim/stats").json()["tokens"].values()
    return sum(c["prompt"] for c in counted), sum(c["completion"] for c in counted)


def request_for(index: int, image: bytes) -> tuple[str, dict, bool]:
    """Both dialects, both engines, streamed and not, every fourth one with its own image."""
    stream = index % 3 == 0
    text = f"{MARKER} {index}"
    if index % 4 == 0:
        b64 = base64.b64encode(image).decode()
        if index % 8 == 0:
            return "/api/chat", {"model": "qwen2.5vl", "stream": stream,
                                 "messages": [{"role": "user", "content": text, "images": [b64]}]}, stream
        return "/v1/chat/completions", {"model": "Qwen/Qwen2-VL-2B-Instruct", "stream": stream, "messages": [
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}]}]}, stream
    if index % 2:
        return "/api/generate", {"model": "Qwen/Qwen2.5-0.5B-Instruct" if index % 5 else "llama3.2",
                                 "prompt": text, "stream": stream, "options": {"num_predict": 8}}, stream
    return "/v1/chat/completions", {"model": "llama3.2" if index % 3 else "Qwen/Qwen2.5-0.5B-Instruct", "stream": stream,
                                    "max_tokens": 8, "messages": [{"role": "user", "content": text}]}, stream


def test_every_request_is_audited_after_sigterm(tmp_path):
    stack = start_cluster(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", gateway_options=NO_LIMITS,
                          sim_args=("--tokens-per-s", "0"))
    try:
        before = [node_tokens(stack.ollama_url), node_tokens(stack.vllm_url)]
        images = {index: PNG + index.to_bytes(4, "big") for index in range(0, 1000, 4)}  # distinct contents

        async def one(client, semaphore, index):
            path, body, stream = request_for(index, images.get(index, PNG))
            async with semaphore:
                if stream:
                    async with client.stream("POST", f"{stack.gateway_url}{path}", json=body) as response:
                        async for _ in response.aiter_bytes():
                            pass
                        return response.status_code
                return (await client.post(f"{stack.gateway_url}{path}", json=body)).status_code

        async def scenario():
            semaphore = asyncio.Semaphore(16)
            async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {stack.keys['faculty1']}"}) as client:
                return await asyncio.gather(*(one(client, semaphore, index) for index in range(1000)))

        statuses = asyncio.run(scenario())
        assert statuses == [200] * 1000
        after = [node_tokens(stack.ollama_url), node_tokens(stack.vllm_url)]
        assert stack.service("gateway").stop(signal.SIGTERM) == 0
    finally:
        stack.stop()

    init_database(stack.env["DATABASE_URL"])
    rows = list(Request.select(Request, RequestBody).join(RequestBody).where(RequestBody.prompt.contains(MARKER)))
    assert len(rows) == 1000 and {row.status for row in rows} == {200}
    assert all(row.requestbody.response for row in rows)
    served = [sum(a[i] - b[i] for a, b in zip(after, before)) for i in (0, 1)]
    assert [sum(row.prompt_tokens for row in rows), sum(row.completion_tokens for row in rows)] == served
    root = Path(stack.env["ARTIFACT_STORAGE_PATH"])
    for image in images.values():
        artifact = Artifact.get(Artifact.sha256 == hashlib.sha256(image).hexdigest())
        assert (root / artifact.path).read_bytes() == image
    assert RequestArtifact.select().count() == len(images)
