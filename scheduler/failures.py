"""Failure budgets: at most `limit` failed attempts per key (an API key prefix, a client address, a
username) in any window of `window_s` seconds, in bounded memory (pure, time passed in).

An attempt is charged when it starts, before the expensive check it guards (an Argon2 hash), so a
burst of attempts that arrive together cannot all slip in before the first failure is recorded;
an attempt that succeeds is refunded. The table holds at most `capacity` keys: when it is full the
key charged longest ago is forgotten, so someone spraying keys costs memory up to the cap and
no more (and at worst wins a fresh budget for the forgotten key). A limit of 0 means no limit.

Both the gateway (API keys, `addons/auth.py`) and the admin app (the login form) use it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from scheduler.limits import UNLIMITED, SlidingWindow

DEFAULT_CAPACITY = 10_000


class FailureBudget:
    def __init__(self, limit: int, window_s: float, capacity: int = DEFAULT_CAPACITY) -> None:
        self.limit, self.window_s, self.capacity = limit, window_s, capacity
        self.windows: OrderedDict[Hashable, SlidingWindow] = OrderedDict()

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now. Charges nothing."""
        window = self.windows.get(key)
        if window is None or self.limit == UNLIMITED:
            return 0.0
        window.prune(now, self.window_s)
        if len(window.times) < self.limit:
            return 0.0
        return window.times[len(window.times) - self.limit] + self.window_s - now

    def charge(self, key: Hashable, now: float) -> None:
        """Count one attempt by `key` at `now` (refund it if it succeeds)."""
        if self.limit == UNLIMITED:
            return
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = SlidingWindow()
        window.prune(now, self.window_s)
        window.times.append(now)
        self.windows.move_to_end(key)
        while len(self.windows) > self.capacity:
            self.windows.popitem(last=False)

    def refund(self, key: Hashable, charged_at: float) -> None:
        """Take back the attempt charged at `charged_at` (it succeeded); nothing if it was forgotten."""
        window = self.windows.get(key)
        if window is None:
            return
        try:
            window.times.remove(charged_at)
        except ValueError:
            return
        if not window.times:
            del self.windows[key]

    def __len__(self) -> int:
        return len(self.windows)
