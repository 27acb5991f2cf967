"""The agent's HTTP side: `GET /gpus` (bearer secret) and `GET /healthz`, NVML read off the event loop and cached."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from aiohttp import web

from telemetry_agent.nvml_reader import NvmlReader, NvmlUnavailable
from telemetry_agent.report import build_report

log = logging.getLogger("telemetry_agent")

DEFAULT_TTL_S = 1.0


class CachedReport:
    """The latest `/gpus` answer, read at most once per `ttl_s` however many pollers ask at once.

    NVML calls can block for tens of milliseconds (or much longer on a sick GPU), so they run on one
    dedicated thread, which also keeps them serialised. A failure is cached like a success, so a driver
    that is missing is not probed on every request.
    """

    def __init__(
        self,
        reader: NvmlReader,
        *,
        node: str,
        ttl_s: float = DEFAULT_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self._reader = reader
        self._node = node
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self._lock = asyncio.Lock()
        self._answer: tuple[int, dict] | None = None
        self._answered_at = 0.0

    async def get(self) -> tuple[int, dict]:
        """(HTTP status, JSON body): 200 and the report, or 503 and why NVML can't be read."""
        async with self._lock:  # a burst of polls waits for the one read in flight, then shares it
            if self._answer is not None and self._monotonic() - self._answered_at < self._ttl_s:
                return self._answer
            answer = await asyncio.get_running_loop().run_in_executor(self._executor, self._read)
            if self._answer is None or answer[0] != self._answer[0]:
                self._log_change(answer)
            self._answer, self._answered_at = answer, self._monotonic()
            return answer

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._reader.close)
        self._executor.shutdown(wait=False)

    def _read(self) -> tuple[int, dict]:
        try:
            sample = self._reader.read()
        except NvmlUnavailable as error:
            return 503, {"error": str(error)}
        except Exception as error:  # the agent reports, it never dies: say what broke and keep serving
            log.exception("reading NVML failed")
            return 503, {"error": f"reading NVML failed unexpectedly: {error!r}"}
        return 200, build_report(sample, node=self._node, taken_at=self._wall_clock())

    @staticmethod
    def _log_change(answer: tuple[int, dict]) -> None:
        status, body = answer
        if status == 200:
            log.info("NVML readable: %d GPU(s), driver %s", len(body["gpus"]), body["driver_version"])
        else:
            log.warning("NVML unavailable, /gpus answers 503: %s", body["error"])


def bearer_matches(authorization: str | None, secret: bytes) -> bool:
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), secret)  # constant time: no timing oracle


def build_app(cache: CachedReport, *, secret: str) -> web.Application:
    if not secret:
        raise ValueError("the telemetry agent needs a non-empty shared secret")
    secret_bytes = secret.encode()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def gpus(request: web.Request) -> web.Response:
        if not bearer_matches(request.headers.get("Authorization"), secret_bytes):
            log.info("refused /gpus from %s: missing or wrong bearer secret", request.remote)
            return web.json_response(
                {
                    "error": "missing or wrong secret: send Authorization: Bearer <the node's telemetry secret>"
                },
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="telemetry"'},
            )
        status, body = await cache.get()
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    async def close_cache(app: web.Application) -> None:
        await cache.close()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/gpus", gpus)
    app.on_cleanup.append(close_cache)
    return app


async def start(
    reader: NvmlReader, *, secret: str, host: str, port: int, node: str, ttl_s: float = DEFAULT_TTL_S
) -> tuple[web.AppRunner, str]:
    """Listen on host:port (0 picks a free port); returns the runner and the base URL."""
    app = build_app(CachedReport(reader, node=node, ttl_s=ttl_s), secret=secret)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
