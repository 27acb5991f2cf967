"""Aliases: a model name an admin defined (`coder`) becomes the model it names, before anything routes.

The caller's name stays the requested model, which translated answers report (as with any spelling of
a model); an engine's answer passed through as it is (OpenAI caller, vLLM engine) names the model behind
the alias, as OpenAI's own aliases do. The limits, the fair queue, the backend and the engine see the
model itself.
The aliases come from the database with the backends (addons/registry.py), so re-pointing one takes
effect within a poll.
"""

from __future__ import annotations

from mitmproxy import http

from addons.context import context_of
from addons.registry import BackendRegistry


class Aliases:
    def __init__(self, registry: BackendRegistry) -> None:
        self.registry = registry

    def request(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if flow.response or context is None or context.canonical is None:
            return
        target = self.registry.resolve(context.canonical.model)
        if target != context.canonical.model:
            context.canonical.model = context.model = target
