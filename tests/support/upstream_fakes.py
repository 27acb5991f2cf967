"""Stand-ins for what `addons.upstream.Upstream` is given (the registry, the gate) and a request to send."""

from __future__ import annotations

from addons.context import RequestContext, Route
from addons.polling import ModelView
from addons.registry import BackendView
from translators.pipeline import parse_client_request

CHAT = b'{"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "stream": %s}'


def backend(backend_id: int, url: str = "") -> BackendView:
    return BackendView(id=backend_id, name=f"node-{backend_id}", url=url or f"http://node-{backend_id}",
                       engine="vllm", max_concurrent=4, enabled=True, draining=False, priority=0, healthy=True,
                       models={"qwen": ModelView("qwen", resident=True)})


class Registry:
    def __init__(self) -> None:
        self.failed_backends: list[str] = []

    def failed(self, view: BackendView, reason: str) -> None:
        self.failed_backends.append(view.name)

    def succeeded(self, view: BackendView, model: str) -> None:
        pass

    def serves(self, model: str | None) -> bool:
        return model == "qwen"


class Gate:
    """Hands out the next backend on each transfer, as the real gate would once a slot is free."""

    def __init__(self, *spare: BackendView) -> None:
        self.spare = list(spare)
        self.transfers = 0

    async def transfer(self, context: RequestContext, exclude: frozenset[int]) -> BackendView | None:
        self.transfers += 1
        if not self.spare:
            return None
        context.backend = self.spare.pop(0)
        return context.backend


def context_for(first: BackendView, stream: bool = False) -> RequestContext:
    context = RequestContext("req-1", Route("inference", "openai", "/v1/chat/completions"), "127.0.0.1")
    context.canonical = parse_client_request("/v1/chat/completions", CHAT % (b"true" if stream else b"false"))
    context.model, context.stream, context.backend = "qwen", stream, first
    return context
