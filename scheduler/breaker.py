"""Circuit breaker per backend: consecutive failures take it out for a cool-down, then one probe (pure).

closed ── `failure_threshold` failures in a row ──▶ open ── `cooldown_s` later ──▶ half-open
  ▲                                                  ▲                              │
  └──────────── the probe succeeds ──────────────────┴────── the probe fails ───────┘

While open the backend gets no requests; half-open lets exactly one request through as the probe.
A success anywhere resets the count. Time is passed in, so tests run the timeline virtually.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class Breaker:
    failure_threshold: int = 3
    cooldown_s: float = 10.0
    state: str = CLOSED
    failures: int = 0
    opened_at: float | None = None
    probe_in_flight: bool = False

    def allows(self, now: float) -> bool:
        """May a new request go to this backend now? (Half-open: only the one probe.)"""
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state, self.probe_in_flight = HALF_OPEN, False
        if self.state == CLOSED:
            return True
        return self.state == HALF_OPEN and not self.probe_in_flight

    def dispatched(self) -> None:
        """A request was sent; in half-open it is the probe."""
        if self.state == HALF_OPEN:
            self.probe_in_flight = True

    def succeeded(self) -> None:
        self.state, self.failures, self.opened_at, self.probe_in_flight = CLOSED, 0, None, False

    def failed(self, now: float) -> bool:
        """Count a failure; True when it opened the breaker (the backend just went out)."""
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.failure_threshold):
            self.state, self.opened_at, self.probe_in_flight = OPEN, now, False
            return True
        return False
