"""Token budgets: a monthly budget per user, reserved before a request runs and settled after (pure).

The gateway and the admin app share these rules: what a user's budget is, which period a moment
falls in, and whether a reservation fits. Reserving the expected cost first, and replacing it by
the real usage afterwards, is what keeps fifty concurrent requests from overrunning a budget.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# A role's budget is DEFAULT_TOKEN_BUDGET times this, unless the user has an override.
ROLE_BUDGET_MULTIPLIERS = {"admin": 10, "faculty": 3, "staff": 2, "student": 1}


def budget_for(role: str, override: int | None, default_budget: int) -> int:
    return override if override is not None else default_budget * ROLE_BUDGET_MULTIPLIERS[role]


def period_of(moment: dt.datetime) -> str:
    """The monthly period ("YYYY-MM", UTC) a moment falls in (asked for every request: formatted without strftime,
    which takes three times as long)."""
    return f"{moment.year:04d}-{moment.month:02d}"


def next_period_start(moment: dt.datetime) -> dt.datetime:
    """When the budget of `moment`'s period rolls over: what Retry-After points at."""
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + dt.timedelta(days=32)).replace(day=1)


@dataclass
class Ledger:
    """One user's budget for one period, as the gateway tracks it between database writes."""

    budget: int
    used: int = 0
    reserved: int = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.used - self.reserved

    def try_reserve(self, cost: int) -> bool:
        """Reserve `cost` tokens if they fit; a request that does not fit is refused whole."""
        if cost > self.remaining:
            return False
        self.reserved += cost
        return True

    def settle(self, reserved: int, actual: int) -> None:
        """Replace a reservation by what the request really used (which may exceed it)."""
        self.reserved = max(0, self.reserved - reserved)
        self.used += actual
