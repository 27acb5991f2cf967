"""Build and start one simulated node (the CLI in `sim.__main__` and in-process tests both use this)."""

from __future__ import annotations

from aiohttp import web

from sim.node import NodeConfig
from sim.ollama import OllamaNode
from sim.vllm import VllmNode

ENGINES = {"ollama": OllamaNode, "vllm": VllmNode}
MAX_BODY_BYTES = 64 * 1024 * 1024  # base64 images make big chat bodies


def build_app(config: NodeConfig) -> web.Application:
    engine = ENGINES[config.engine](config)
    app = web.Application(middlewares=[engine.node.record_and_log, *engine.middlewares], client_max_size=MAX_BODY_BYTES)
    engine.add_routes(app)
    return app


async def start(config: NodeConfig) -> tuple[web.AppRunner, str]:
    """Listen on the configured host and port (0 picks a free one); returns the runner and the base URL.

    A client that disconnects cancels its handler, so a queued request leaves the queue as in vLLM.
    """
    runner = web.AppRunner(
        build_app(config), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{f'[{host}]' if ':' in host else host}:{port}"
