"""`python -m sim ollama|vllm --port P --models a,b [...]`: run one simulated node until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from sim.app import start
from sim.node import NodeConfig


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _at_least(minimum: float, kind=int):
    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {text}")
        return value

    return parse


def parse_config(argv: list[str] | None = None) -> NodeConfig:
    parser = argparse.ArgumentParser(prog="python -m sim", description="Run a simulated Ollama or vLLM node.")
    parser.add_argument("engine", choices=["ollama", "vllm"])
    parser.add_argument("--port", type=_at_least(0), default=0, help="0 picks a free port (printed at start)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--models", type=_names, required=True, help="comma-separated model names")
    parser.add_argument("--tokens-per-s", type=_at_least(0, float), default=200.0, help="0: no pacing")
    parser.add_argument(
        "--ttft-ms", type=_at_least(0, float), default=0.0, help="delay before the first token"
    )
    parser.add_argument("--slots", type=_at_least(1), default=4, help="concurrent generations; others queue")
    parser.add_argument(
        "--load-ms", type=_at_least(0, float), default=0.0, help="Ollama: time to load a model"
    )
    parser.add_argument("--max-loaded", type=_at_least(1), default=2, help="Ollama: models resident at once")
    parser.add_argument("--vision-models", type=_names, default=(), help="models that accept images")
    parser.add_argument("--embedding-models", type=_names, default=(), help="embedding-only models")
    args = parser.parse_args(argv)
    return NodeConfig(
        engine=args.engine,
        models=args.models,
        host=args.host,
        port=args.port,
        tokens_per_s=args.tokens_per_s,
        ttft_ms=args.ttft_ms,
        slots=args.slots,
        load_ms=args.load_ms,
        max_loaded=args.max_loaded,
        vision_models=args.vision_models,
        embedding_models=args.embedding_models,
    )


async def serve(config: NodeConfig) -> None:
    runner, url = await start(config)
    print(f"sim {config.engine} listening on {url}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    logging.getLogger("sim").info("%s node on %s shutting down", config.engine, url)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
