"""Simulated nodes started in-process on free ports, one event loop thread each, for the sync official clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from sim.app import start
from sim.node import NodeConfig


@pytest.fixture
def start_node() -> Iterator[Callable[..., str]]:
    """`start_node("ollama", models=("llama3.2",), ...)` -> base URL; every node stops after the test."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners = []

    def starter(engine: str, **settings) -> str:
        settings = {"models": ("llama3.2",), "tokens_per_s": 0.0} | settings
        runner, url = asyncio.run_coroutine_threadsafe(
            start(NodeConfig(engine=engine, **settings)), loop
        ).result(5)
        runners.append(runner)
        return url

    yield starter
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """One pooled client: a fresh `httpx.get` builds a TLS context each time, slow on a small machine."""
    with httpx.Client(timeout=10) as client:
        yield client
