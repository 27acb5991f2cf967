"""Streamed tokens per second through HAProxy with 1 and with 2 gateway processes (issue 13).

`sim.scaleout` as `make run-cluster` starts it (HAProxy, gateways sharing Redis, the simulated nodes, the
admin app), on free ports, with SQLite in a temporary directory. One simulated vLLM node with enough slots
that they never bind (`--slots`) streams `--streams` answers at once, each at `--tokens-per-s`, more than
one gateway process can relay; the client (aiohttp, one event per token) counts the events it receives
over `--seconds` once every stream is running. Beside it: the CPU seconds each gateway process used.

Everything shares this machine's cores: the node, HAProxy, Redis, the client and the gateways; the figures
say how far one more process helps here, not what a host with a core per gateway gets.

    python bench/scaleout.py [--streams 64] [--tokens-per-s 200] [--seconds 20] [--slots 256]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from harness import CHAT_MODEL, auth, chat_body, cpu_seconds, load_average, raise_fd_limit
from streams import connector

from sim.scaleout import start_scaled_stack
from sim.stack import free_port
from tests.support.cluster import NO_LIMITS

REDIS_URL = "redis://127.0.0.1:6379/0"


async def measure(url: str, key: str, streams: int, seconds: float) -> tuple[int, int, set[str]]:
    """(events received in the window, requests that failed, what the failures said)."""
    received, failed, errors = 0, 0, set()
    counting = asyncio.Event()
    stop = asyncio.Event()

    async def stream(session: aiohttp.ClientSession) -> None:
        nonlocal received, failed
        while not stop.is_set():
            async with session.post(f"{url}/v1/chat/completions", json=chat_body(2000, True),
                                    headers=auth(key)) as response:
                if response.status != 200:
                    failed += 1
                    errors.add(f"{response.status} {(await response.read())[:200]!r}")
                    await asyncio.sleep(1)
                    continue
                async for line in response.content:
                    if counting.is_set() and line.startswith(b"data: {"):
                        received += 1
                    if stop.is_set():
                        return

    async with aiohttp.ClientSession(connector=connector(), timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.create_task(stream(session)) for _ in range(streams)]
        await asyncio.sleep(3)
        counting.set()
        await asyncio.sleep(seconds)
        counted = received
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counted, failed, errors


def run(gateways: int, args: argparse.Namespace) -> dict:
    work_dir = Path(tempfile.mkdtemp(prefix=f"mindrouter-bench-scaleout{gateways}-"))
    prefix = f"mindrouter-bench-{secrets.token_hex(4)}"
    env = {"DATABASE_URL": f"sqlite:///{work_dir / 'db.sqlite'}", "REDIS_URL": REDIS_URL,
           "SECRET_KEY": secrets.token_hex(16), "DEFAULT_TOKEN_BUDGET": str(10**12)}
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    stack = start_scaled_stack(work_dir, env, ports, gateways, (*NO_LIMITS, f"redis_key_prefix={prefix}"),
                               key_users=("admin", "student1"), max_concurrent=args.slots,
                               sim_args=("--tokens-per-s", str(args.tokens_per_s), "--slots", str(args.slots)))
    try:
        before = [cpu_seconds(g.process.pid) for g in stack.gateways]
        began = time.monotonic()
        events, failed, errors = asyncio.run(measure(stack.gateway_url, stack.keys["student1"], args.streams, args.seconds))
        wall = time.monotonic() - began
        cpu = [cpu_seconds(g.process.pid) - b for g, b in zip(stack.gateways, before)]
        return {"gateways": gateways, "tokens_per_s": events / args.seconds, "failed": failed, "errors": errors,
                "gateway_cpu_share": [round(c / wall, 2) for c in cpu], "load": load_average()}
    finally:
        stack.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens-per-s", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--slots", type=int, default=256)
    args = parser.parse_args()
    raise_fd_limit(8192)
    print(f"{args.streams} streams of {CHAT_MODEL} at {args.tokens_per_s} tokens/s each "
          f"(offered {args.streams * args.tokens_per_s} tokens/s), {args.seconds:g} s window", file=sys.stderr)
    for gateways in (1, 2):
        result = run(gateways, args)
        print(f"{gateways} gateway(s): {result['tokens_per_s']:.0f} streamed tokens/s through HAProxy, "
              f"{result['failed']} failed, gateway CPU {result['gateway_cpu_share']} of a core, "
              f"load average {result['load']:.1f}", flush=True)
        for error in sorted(result["errors"])[:5]:
            print(f"  failed: {error}", flush=True)


if __name__ == "__main__":
    main()
