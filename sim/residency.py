"""Which models a simulated Ollama node holds in memory, the way Ollama's scheduler keeps runners.

At most `max_loaded` models are resident. A request for another model waits the load time, evicting the
least recently used idle model first (or waiting for one to go idle). A model stays loaded for its
`keep_alive` after its last request (`0` unloads at once, negative keeps it forever); `/api/ps` shows
what is loaded and when it expires.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

DEFAULT_KEEP_ALIVE_S = 300.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value) -> float:
    """Seconds to stay loaded from Ollama's `keep_alive`: seconds as a number or Go duration ("5m", "1h30m").

    None means the default five minutes; a negative value means forever (infinity).
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.inf if value < 0 else float(value)
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        sign = -1 if text.startswith("-") else 1
        parts = _DURATION_PART.findall(text.lstrip("+-"))
        if not parts or "".join(n + u for n, u in parts) != text.lstrip("+-"):
            raise ValueError(f"time: invalid duration {text!r}") from None
        seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return math.inf if seconds < 0 else seconds


@dataclass
class Resident:
    expires_at: float  # wall-clock seconds; infinity for "forever"
    in_use: int = 0


class Residency:
    def __init__(self, max_loaded: int, load_seconds: float):
        self.max_loaded = max_loaded
        self.load_seconds = load_seconds
        self._loaded: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self._loading: set[str] = set()
        self.loads: Counter[str] = Counter()  # completed loads per model: how often the node paid the load time
        self._changed = asyncio.Condition()

    def loaded(self) -> dict[str, Resident]:
        """What is resident now, least recently used first."""
        self._drop_expired()
        return dict(self._loaded)

    @asynccontextmanager
    async def use(self, name: str, keep_alive_s: float) -> AsyncIterator[float]:
        """Hold `name` resident for one request; yields the seconds spent waiting for it to load."""
        started = time.monotonic()
        await self._ensure_loaded(name)
        resident = self._loaded[name]
        resident.in_use += 1
        self._loaded.move_to_end(name)
        try:
            yield time.monotonic() - started
        finally:
            resident.in_use -= 1
            resident.expires_at = time.time() + keep_alive_s
            async with self._changed:
                if keep_alive_s == 0 and resident.in_use == 0:
                    self._loaded.pop(name, None)
                self._changed.notify_all()

    async def unload(self, name: str) -> None:
        """Unload now, as `keep_alive: 0` with no prompt does; a busy model goes once its requests end."""
        async with self._changed:
            resident = self._loaded.get(name)
            if resident is not None and resident.in_use == 0:
                del self._loaded[name]
            elif resident is not None:
                resident.expires_at = time.time()
            self._changed.notify_all()

    async def _ensure_loaded(self, name: str) -> None:
        async with self._changed:
            while True:
                self._drop_expired()
                if name in self._loaded:
                    return
                if name not in self._loading and (self._has_room() or self._evict_idle()):
                    break
                await self._changed.wait()
            self._loading.add(name)
        try:
            await asyncio.sleep(self.load_seconds)
        finally:
            async with self._changed:
                self._loading.discard(name)
                if not asyncio.current_task().cancelling():
                    self._loaded[name] = Resident(expires_at=time.time() + DEFAULT_KEEP_ALIVE_S)
                    self.loads[name] += 1
                self._changed.notify_all()

    def _has_room(self) -> bool:
        return len(self._loaded) + len(self._loading) < self.max_loaded

    def _evict_idle(self) -> bool:
        idle = next((n for n, r in self._loaded.items() if r.in_use == 0), None)
        if idle is None:
            return False
        del self._loaded[idle]
        return True

    def _drop_expired(self) -> None:
        now = time.time()
        for name in [n for n, r in self._loaded.items() if r.in_use == 0 and r.expires_at <= now]:
            del self._loaded[name]
