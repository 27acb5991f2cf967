"""A small discrete-event simulator that drives the scheduler in virtual time, as the Gate would."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import pytest

from scheduler import BackendState, Grant, Scheduler, SchedulerConfig


@dataclass(frozen=True)
class Finished:
    request_id: str
    user_id: str
    model: str
    tokens: int
    submitted_at: float
    granted_at: float
    finished_at: float
    backend_id: int
    burst: bool


@dataclass
class _Spec:
    user_id: str
    weight: float
    model: str
    cost: int
    actual: int
    submitted_at: float = 0.0
    grant: Grant | None = None
    granted_at: float = 0.0


@dataclass
class ClusterSimulation:
    """Backends whose every slot serves `tokens_per_s`, so a request holds its slot tokens / rate.

    Arrivals and completions are events; after each one the simulation calls `dispatch` exactly as
    the gateway does, and records every grant and completion for the test to judge.
    """

    backends: list[BackendState]
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    tokens_per_s: float = 100.0

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.config)
        self.scheduler.update_backends(self.backends)
        self.now = 0.0
        self.grants: list[tuple[float, Grant]] = []
        self.finished: list[Finished] = []
        self._events: list[tuple[float, int, str, object]] = []
        self._order = itertools.count()
        self._specs: dict[str, _Spec] = {}
        self._ids = itertools.count()
        self._busy_until: dict[str, float] = {}  # closed-loop users -> when they stop resubmitting

    def submit_at(
        self,
        at: float,
        user_id: str,
        model: str,
        cost: int,
        *,
        weight: float = 1.0,
        actual: int | None = None,
    ) -> str:
        request_id = f"{user_id}-{next(self._ids)}"
        self._specs[request_id] = _Spec(user_id, weight, model, cost, cost if actual is None else actual)
        heapq.heappush(self._events, (at, next(self._order), "arrive", request_id))
        return request_id

    def keep_busy(
        self,
        user_id: str,
        model: str,
        cost: int,
        *,
        weight: float = 1.0,
        outstanding: int = 16,
        actual: int | None = None,
        start: float = 0.0,
        until: float = float("inf"),
    ) -> None:
        """A closed-loop user: `outstanding` requests at `start`, each completion sends one more."""
        self._busy_until[user_id] = until
        for _ in range(outstanding):
            self.submit_at(start, user_id, model, cost, weight=weight, actual=actual)

    def run(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            self.now, _, kind, request_id = heapq.heappop(self._events)
            spec = self._specs[request_id]
            if kind == "arrive":
                spec.submitted_at = self.now
                self.scheduler.submit(request_id, spec.user_id, spec.weight, spec.model, spec.cost, self.now)
            else:
                self.scheduler.release(request_id, spec.actual, self.now)
                self._record_finish(request_id, spec)
            for grant in self.scheduler.dispatch(self.now):
                self._start(grant)
        self.now = until

    def _start(self, grant: Grant) -> None:
        spec = self._specs[grant.request_id]
        spec.grant, spec.granted_at = grant, self.now
        self.grants.append((self.now, grant))
        heapq.heappush(
            self._events,
            (self.now + spec.actual / self.tokens_per_s, next(self._order), "finish", grant.request_id),
        )

    def _record_finish(self, request_id: str, spec: _Spec) -> None:
        self.finished.append(
            Finished(
                request_id,
                spec.user_id,
                spec.model,
                spec.actual,
                spec.submitted_at,
                spec.granted_at,
                self.now,
                spec.grant.backend_id,
                spec.grant.burst,
            )
        )
        if self.now < self._busy_until.get(spec.user_id, -1.0):
            self.submit_at(
                self.now, spec.user_id, spec.model, spec.cost, weight=spec.weight, actual=spec.actual
            )

    def served_tokens(self, since: float = 0.0) -> dict[str, int]:
        served: dict[str, int] = {}
        for done in self.finished:
            if done.finished_at >= since:
                served[done.user_id] = served.get(done.user_id, 0) + done.tokens
        return served

    def shares(self, since: float = 0.0) -> dict[str, float]:
        served = self.served_tokens(since)
        total = sum(served.values())
        return {user_id: tokens / total for user_id, tokens in served.items()}


def jain_index(values: list[float]) -> float:
    """1.0 when all values are equal, 1/n when one value holds everything."""
    return sum(values) ** 2 / (len(values) * sum(value * value for value in values))


@pytest.fixture(scope="session")
def simulation():
    """The ClusterSimulation class (session-scoped so hypothesis tests may use it)."""
    return ClusterSimulation


@pytest.fixture(scope="session")
def jain():
    return jain_index
