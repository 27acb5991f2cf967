"""`python -m telemetry_agent --port 8007`: serve this node's GPU figures until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from telemetry_agent.nvml_reader import NvmlReader
from telemetry_agent.server import DEFAULT_TTL_S, start

MIN_SECRET_CHARS = 16
HOW_TO_MAKE_A_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m telemetry_agent",
        description="Serve this node's per-GPU utilisation, memory, temperature and power (NVML) over HTTP.",
    )
    parser.add_argument("--port", type=int, default=8007, help="0 picks a free port (printed at start)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument(
        "--secret-env",
        default="TELEMETRY_SECRET",
        metavar="NAME",
        help="environment variable holding the shared secret (default: TELEMETRY_SECRET)",
    )
    parser.add_argument(
        "--secret-file", metavar="PATH", help="read the shared secret from this file instead (first line)"
    )
    parser.add_argument(
        "--node-name", default=socket.gethostname(), help="name reported as 'node' (default: the hostname)"
    )
    parser.add_argument(
        "--cache-ttl",
        type=float,
        default=DEFAULT_TTL_S,
        metavar="SECONDS",
        help=f"reuse one NVML reading for this long (default: {DEFAULT_TTL_S})",
    )
    return parser


def resolve_secret(args: argparse.Namespace, environ: dict[str, str], parser: argparse.ArgumentParser) -> str:
    """The shared secret, or exit 2 saying where to put one."""
    if args.secret_file:
        try:
            with open(args.secret_file, encoding="utf-8") as handle:
                secret = handle.readline().strip()
        except OSError as error:
            parser.error(f"cannot read --secret-file {args.secret_file}: {error.strerror}")
        source = f"--secret-file {args.secret_file}"
    else:
        secret = environ.get(args.secret_env, "").strip()
        source = f"${args.secret_env}"
    if not secret:
        parser.error(
            f"no shared secret in {source}: the agent refuses to serve GPU figures unprotected. "
            f"Set {args.secret_env} (or pass --secret-file PATH) to a random string, e.g. from {HOW_TO_MAKE_A_SECRET}"
        )
    if len(secret) < MIN_SECRET_CHARS:
        parser.error(
            f"the shared secret in {source} has {len(secret)} characters; use at least {MIN_SECRET_CHARS}, "
            f"e.g. from {HOW_TO_MAKE_A_SECRET}"
        )
    return secret


async def serve(args: argparse.Namespace, secret: str) -> None:
    reader = NvmlReader()
    runner, url = await start(
        reader, secret=secret, host=args.host, port=args.port, node=args.node_name, ttl_s=args.cache_ttl
    )
    print(f"telemetry agent listening on {url}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    logging.getLogger("telemetry_agent").info("telemetry agent on %s shutting down", url)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cache_ttl < 0:
        parser.error(f"--cache-ttl must be >= 0 seconds, got {args.cache_ttl}")
    secret = resolve_secret(args, dict(os.environ), parser)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(serve(args, secret))


if __name__ == "__main__":
    main()
