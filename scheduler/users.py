"""What the scheduler remembers about a user between requests: burst credit, debt and recent usage."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class UserState:
    """One user's standing.

    Burst credit accrues only while the user is idle (nothing waiting, nothing running), at a rate
    that fills `burst_cap × weight` in one fairness window. Debt is a negative deficit (from
    underestimated costs) that outlived the user's queue; idle accrual repays it before any credit
    builds up, and the user's next queue starts with what is left of it.
    """

    user_id: Hashable
    weight: float
    burst_credit: float
    idle_since: float | None
    debt: float = 0.0
    waiting: int = 0
    in_flight: int = 0
    max_running: int = 0  # running requests allowed at once (0: no cap); the latest submission's
    served: deque[tuple[float, float]] = field(default_factory=deque)  # (released at, tokens)
    served_total: float = 0.0  # sum of `served`
    last_turns: dict[str, int] = field(default_factory=dict)  # model -> round of its latest round-robin turn

    @property
    def capped(self) -> bool:
        """At its running cap: its queues wait out of the rotation until one of its requests ends."""
        return 0 < self.max_running <= self.in_flight

    def earned_since_idle(self, now: float, burst_cap: float, window_s: float) -> tuple[float, float]:
        """(burst credit, debt) as they stand at `now`, without changing anything."""
        if self.idle_since is None:
            return self.burst_credit, self.debt
        earned = burst_cap * self.weight * max(0.0, now - self.idle_since) / window_s
        repaid = min(self.debt, earned)
        credit = min(burst_cap * self.weight, self.burst_credit + earned - repaid)
        return credit, self.debt - repaid

    def settle(self, now: float, burst_cap: float, window_s: float) -> None:
        """Book what idleness earned up to `now`; the user stays idle if it was."""
        if self.idle_since is not None:
            self.burst_credit, self.debt = self.earned_since_idle(now, burst_cap, window_s)
            self.idle_since = now

    def charge(self, tokens: float) -> None:
        """Charge tokens with no open queue to take them: from burst credit first, then as debt."""
        from_credit = min(self.burst_credit, tokens)
        self.burst_credit -= from_credit
        self.debt += tokens - from_credit

    def refund(self, tokens: float) -> None:
        """Give back an overestimate with no open queue: it repays debt, and is otherwise dropped."""
        self.debt = max(0.0, self.debt - tokens)

    def record_usage(self, now: float, tokens: float, window_s: float) -> None:
        self.served.append((now, tokens))
        self.served_total += tokens
        self.forget_usage_before(now - window_s)

    def forget_usage_before(self, cutoff: float) -> None:
        while self.served and self.served[0][0] < cutoff:
            self.served_total -= self.served.popleft()[1]
        if not self.served:
            self.served_total = 0.0  # no float drift left behind
