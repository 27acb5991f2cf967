"""`python -m tests.support.fake_gpu_node --port P`: the real telemetry agent over recorded NVML answers.

A GPU node for tests on machines without one: the agent's own server and reader, with `FakeNvml`
replaying tests/telemetry_agent/nvml_recording.py instead of the driver.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from telemetry_agent.nvml_reader import NvmlReader
from telemetry_agent.server import start
from tests.telemetry_agent.fake_nvml import FakeNvml


async def serve(port: int) -> None:
    runner, url = await start(NvmlReader(FakeNvml()), secret=os.environ["TELEMETRY_SECRET"], host="127.0.0.1",
                              port=port, node="fake-gpu-node")
    print(f"fake GPU node listening on {url}", flush=True)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))
