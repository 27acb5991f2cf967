"""Backend polls while the gateway is too busy to turn its event loop round within the poll timeout.

Under heavy load one turn of the gateway's loop can outlast the poll timeout; polls made on that loop then
all time out at once and every backend is taken out of rotation, idle ones included. The registry polls
from a loop of its own, so a healthy node stays healthy whatever the gateway's own load.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from addons.polling import PollLoop
from addons.registry import BackendRegistry, BackendView
from sim.stack import PYTHON, Service, free_port

POLL_TIMEOUT_S = 1
LOOP_TURN_S = 1.5  # longer than the poll timeout


class DiscardedWrites:
    def submit(self, write) -> None:
        pass


@pytest.fixture(scope="module")
def ollama_node(tmp_path_factory):
    port = free_port()
    node = Service("ollama", [PYTHON, "-m", "sim", "ollama", "--port", str(port), "--models", "llama3.2"], {},
                   tmp_path_factory.mktemp("polling"))
    url = f"http://127.0.0.1:{port}"
    node.wait_http(f"{url}/api/version")
    yield url
    node.stop()


def test_a_healthy_node_stays_healthy_while_the_gateway_loop_is_jammed(ollama_node):
    registry = BackendRegistry(DiscardedWrites())
    registry.polls = PollLoop(POLL_TIMEOUT_S)
    view = BackendView(id=1, name="node", url=ollama_node, engine="ollama", max_concurrent=2, enabled=True,
                       draining=False, priority=0)
    jammed = asyncio.Event()

    async def jam() -> None:
        """Every turn of this loop now takes LOOP_TURN_S of CPU-bound work (the GIL is let go meanwhile,
        as it is every few milliseconds when the gateway's Python code is busy)."""
        while not jammed.is_set():
            time.sleep(LOOP_TURN_S)
            await asyncio.sleep(0)

    async def scenario() -> None:
        jammer = asyncio.create_task(jam())
        await asyncio.sleep(0)
        try:
            await registry.poll(view)
        finally:
            jammed.set()
            await jammer

    try:
        asyncio.run(scenario())
    finally:
        registry.polls.stop()
    assert view.healthy, view.last_error
    assert "llama3.2:latest" in view.models
    # The node's latency is timed where the poll ran: the jammed loop's turns are not the node's.
    assert view.latency_ema_ms < 1000 * LOOP_TURN_S / 2
