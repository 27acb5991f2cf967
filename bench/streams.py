"""The benchmarks' HTTP client: one request, streamed or not, with its timings (aiohttp, asyncio).

Times are `time.perf_counter()` seconds. A streamed answer is read line by line as it arrives; only the
usage chunk is parsed, so the client's own cost per chunk stays small.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Exchange:
    """One request as the client saw it."""

    user: str = ""
    model: str = ""
    sent: float = 0.0
    headers: float | None = None  # response headers in: the gateway granted a slot and the backend answered
    first_chunk: float | None = None  # first SSE event (streams) or the whole body (non-streamed)
    first_token: float | None = None  # first event that carries generated text
    end: float | None = None
    status: int | None = None
    usage: dict | None = None
    chunks: int = 0  # SSE data events, [DONE] excluded
    chunk_times: list[float] = field(default_factory=list)  # every event's arrival, only when asked for
    token_times: list[float] = field(default_factory=list)  # arrivals of events carrying text, when asked for
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.end is not None and self.status == 200 and self.error is None

    def tokens(self, kind: str = "total_tokens") -> int:
        return int((self.usage or {}).get(kind) or 0)


def carries_text(line: bytes) -> bool:
    """Whether an SSE data line carries generated text (not the opening role chunk, not the usage)."""
    try:
        chunk = json.loads(line[6:])
    except ValueError:
        return False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if (
            delta.get("content")
            or delta.get("reasoning_content")
            or delta.get("tool_calls")
            or choice.get("text")
        ):
            return True
    return False


def ndjson_carries_text(line: bytes) -> bool:
    try:
        chunk = json.loads(line)
    except ValueError:
        return False
    return bool((chunk.get("message") or {}).get("content") or chunk.get("response"))


def connector(limit: int = 0) -> aiohttp.TCPConnector:
    """Keep-alive connections, no cap on their number (0) unless asked."""
    return aiohttp.TCPConnector(limit=limit, limit_per_host=0, force_close=False, enable_cleanup_closed=True)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict,
    headers: dict[str, str],
    exchange: Exchange | None = None,
    keep_chunk_times: bool = False,
) -> Exchange:
    """POST `body`; read the answer as a stream when `body["stream"]`. The exchange is filled in place, so
    a caller that cancels the task still sees how far it got."""
    exchange = exchange or Exchange()
    exchange.model = exchange.model or body.get("model", "")
    exchange.sent = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as response:
            exchange.headers = time.perf_counter()
            exchange.status = response.status
            if not body.get("stream") or response.status != 200:
                payload = await response.read()
                exchange.first_chunk = exchange.first_token = exchange.end = time.perf_counter()
                if response.status != 200:
                    exchange.error = payload[:300].decode("utf-8", "replace")
                    return exchange
                answer = json.loads(payload)
                exchange.usage = answer.get("usage")
                if exchange.usage is None and "eval_count" in answer:  # an Ollama-dialect answer
                    exchange.usage = {
                        "prompt_tokens": answer.get("prompt_eval_count", 0),
                        "completion_tokens": answer["eval_count"],
                        "total_tokens": answer.get("prompt_eval_count", 0) + answer["eval_count"],
                    }
                return exchange
            async for line in response.content:
                now = time.perf_counter()
                if line.startswith(b"{"):  # NDJSON (Ollama dialect): one object a line, the last one done
                    if exchange.first_chunk is None:
                        exchange.first_chunk = now
                    exchange.chunks += 1
                    if keep_chunk_times:
                        exchange.chunk_times.append(now)
                        if ndjson_carries_text(line):
                            exchange.token_times.append(now)
                    if exchange.first_token is None and b'"content":""' not in line.replace(b" ", b""):
                        exchange.first_token = now
                    if b'"done":true' in line.replace(b" ", b""):
                        answer = json.loads(line)
                        if "error" in answer:
                            exchange.error = str(answer["error"])[:300]
                        prompt, generated = answer.get("prompt_eval_count", 0), answer.get("eval_count", 0)
                        exchange.usage = {
                            "prompt_tokens": prompt,
                            "completion_tokens": generated,
                            "total_tokens": prompt + generated,
                        }
                    elif b'"error"' in line[:20]:
                        exchange.error = line[:300].decode("utf-8", "replace")
                    continue
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    break
                if exchange.first_chunk is None:
                    exchange.first_chunk = now
                exchange.chunks += 1
                if keep_chunk_times:
                    exchange.chunk_times.append(now)
                    if carries_text(line):
                        exchange.token_times.append(now)
                if b'"usage"' in line:
                    chunk = json.loads(line[6:])
                    exchange.usage = chunk.get("usage") or exchange.usage
                    if chunk.get("choices"):
                        exchange.first_token = exchange.first_token or now
                elif b'"error"' in line[:40]:
                    exchange.error = line[6:300].decode("utf-8", "replace")
                elif exchange.first_token is None and carries_text(line):
                    exchange.first_token = now
            exchange.end = time.perf_counter()
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ValueError) as exc:
        exchange.error = f"{exc.__class__.__name__}: {exc}"
    return exchange
