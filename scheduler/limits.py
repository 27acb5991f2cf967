"""Rate and concurrency limits: the arithmetic every counter store follows (pure, time passed in).

- A **rate limit** allows at most `limit` requests in any window of `window_s` seconds: an exact
  sliding window over the times of the admitted requests (a log, not fixed buckets, so a burst at
  the end of one minute and the start of the next cannot double the rate). A request admitted at
  `t` occupies the window until `t + window_s`; a refused request is not recorded, and one refused
  by a later step is given back (`give_back`).
- Running requests per user are the fair queue's cap (`scheduler/wdrr.py`; with several gateways
  the shared queue's, `addons/cluster.py`), not a refusal here.
- A limit of 0 means no limit.

The in-process store uses these classes directly; the Redis store runs the same rules in Lua
(`addons/limits.py`), and the tests check the two agree decision for decision.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

UNLIMITED = 0


def parse_role_limits(text: str, roles: Iterable[str]) -> dict[str, int]:
    """`"admin=600,faculty=180,staff=120,student=60"` → {role: limit}; every role must be given once.

    Raises ValueError saying what was wrong and what is expected.
    """
    roles = tuple(roles)
    expected = f"ROLE=N for each of {', '.join(roles)}, N a whole number ≥ 0 (0: no limit)"
    limits: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, equals, number = (piece.strip() for piece in item.partition("="))
        if not equals or role not in roles:
            raise ValueError(f"{item!r} is not ROLE=N with a known role (expected {expected})")
        if role in limits:
            raise ValueError(f"role {role!r} is given twice (expected {expected})")
        if not number.isdigit():
            raise ValueError(f"{item!r}: {number!r} is not a whole number ≥ 0 (expected {expected})")
        limits[role] = int(number)
    missing = [role for role in roles if role not in limits]
    if missing:
        raise ValueError(f"no limit for {', '.join(missing)} (expected {expected})")
    return limits


def limit_for(role: str, override: int | None, role_limits: Mapping[str, int]) -> int:
    """The override when there is one, else the role's limit (either may be 0: no limit)."""
    return override if override is not None else role_limits[role]


def retry_after_header(seconds: float) -> str:
    """A Retry-After value: whole seconds, rounded up, at least 1 (0 would invite an instant retry)."""
    return str(max(1, math.ceil(seconds - 1e-9)))


def window_wait(times: Sequence[float], limit: int, window_s: float, now: float) -> float:
    """Seconds until one more request fits, given the sorted times of the requests still in the window.

    0 when it fits now. When the limit was lowered below what the window holds, more than the
    oldest must leave: the wait is until the (count − limit + 1)-th oldest does.
    """
    if limit == UNLIMITED or len(times) < limit:
        return 0.0
    return times[len(times) - limit] + window_s - now


@dataclass
class SlidingWindow:
    """The admitted requests of one API key, oldest first."""

    times: deque[float] = field(default_factory=deque)

    def prune(self, now: float, window_s: float) -> None:
        """Forget requests that left the window: admitted at or before `now - window_s`."""
        while self.times and self.times[0] <= now - window_s:
            self.times.popleft()

    def give_back(self, at: float) -> None:
        """Forget one request admitted at `at` (a later step refused it: it does not count)."""
        try:
            self.times.remove(at)
        except ValueError:
            pass  # it had left the window already

    def admit(self, now: float, limit: int, window_s: float) -> float:
        """Record a request at `now` if it fits and return 0.0; else the seconds until one would fit."""
        self.prune(now, window_s)
        wait = window_wait(self.times, limit, window_s, now)
        if wait > 0:
            return wait
        self.times.append(now)
        return 0.0
