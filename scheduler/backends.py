"""Backends as the scheduler sees them: which can take a request for a model now, and which is best.

The gateway owns the facts about backends (registry, health and telemetry polls) and hands them over
as `BackendState` values. `BackendPool` adds what only the scheduler knows: the slot table of granted
requests, in-flight counts, and residency learned from its own dispatches. It keeps, per model, the
set of backends with a free slot, so finding where a request may go costs nothing per queued request.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class BackendState:
    """One backend as the registry and its last poll describe it."""

    backend_id: int
    models: frozenset[str]
    max_concurrent: int
    resident: frozenset[str] = frozenset()  # Ollama /api/ps; a vLLM node's served model is always resident
    models_held: int | None = None  # distinct models in memory, where `resident` spells one several ways
    healthy: bool = True
    enabled: bool = True
    draining: bool = False
    waiting: int = 0  # the engine's own queue (vLLM num_requests_waiting)
    kv_cache_usage: float | None = None  # 0..1, vLLM only
    gpu_utilization: float | None = None  # 0..1
    latency_ema_ms: float | None = None
    priority: int = 0  # set by an admin; higher wins ties

    def __post_init__(self) -> None:
        if self.max_concurrent < 0:
            raise ValueError(
                f"backend {self.backend_id}: max_concurrent must be 0 or more, got {self.max_concurrent}"
            )

    @property
    def accepts_work(self) -> bool:
        """Healthy, enabled and not draining. With no slot (`max_concurrent` 0: a gateway's share of it while
        Redis is away) it still serves its models, and their requests wait for a slot rather than fail."""
        return self.healthy and self.enabled and not self.draining


class Slot(NamedTuple):
    """A granted request holding one slot on one backend until it is released."""

    request_id: str
    backend_id: int
    user_id: Hashable
    model: str
    cost: float
    granted_at: float


def preference(state: BackendState, in_flight: int, resident: bool, models_held: int) -> tuple:
    """Sort key among backends with a free slot, best first (DESIGN section 5).

    A resident model answers without a load of several seconds, so residency comes first. Where the
    model must be loaded anyway, the backend holding the fewest models is the least likely to evict one
    that others are using (two nodes asked for two models in turn keep one each, instead of thrashing).
    Load then adds the fractions that say how busy the engine is (unknown telemetry counts as idle, so
    Ollama and vLLM nodes compare on what both report); latency EMA and the admin's priority break ties.
    """
    load = (
        (in_flight + state.waiting) / state.max_concurrent
        + (state.kv_cache_usage or 0.0)
        + (state.gpu_utilization or 0.0)
    )
    latency = state.latency_ema_ms if state.latency_ema_ms is not None else math.inf
    return (not resident, 0 if resident else models_held, load, latency, -state.priority, state.backend_id)


class BackendPool:
    """The backends, their slot table, and per-model indices of where a free slot is."""

    def __init__(self) -> None:
        self._states: dict[int, BackendState] = {}
        self._in_flight: dict[int, int] = {}
        self._resident: dict[int, set[str]] = {}
        self._held: dict[int, int] = {}  # how many models each backend holds in memory
        self._slots: dict[str, Slot] = {}
        # model -> accepting backends with a free slot; no empty sets (look up with .get)
        self._free: defaultdict[str, set[int]] = defaultdict(set)
        self._capacity: dict[str, int] = {}  # model -> slots over accepting backends that serve it
        self._neighbours: dict[str, frozenset[str]] = {}  # model -> models sharing a backend with it

    def replace(self, states: Iterable[BackendState]) -> None:
        """Take the registry's current view; slots already granted stay counted where they are."""
        by_id: dict[int, BackendState] = {}
        for state in states:
            if state.backend_id in by_id:
                raise ValueError(f"backend {state.backend_id} given twice")
            by_id[state.backend_id] = state
        self._states = by_id
        self._resident = {backend_id: set(state.resident) for backend_id, state in by_id.items()}
        self._held = {
            backend_id: len(state.resident) if state.models_held is None else state.models_held
            for backend_id, state in by_id.items()
        }
        self._in_flight = {
            backend_id: count for backend_id, count in self._in_flight.items() if count or backend_id in by_id
        }
        for backend_id in by_id:
            self._in_flight.setdefault(backend_id, 0)
        self._rebuild_indices()

    def _rebuild_indices(self) -> None:
        self._free, self._capacity = defaultdict(set), {}
        hosts: dict[str, list[BackendState]] = {}
        for state in self._states.values():
            if not state.accepts_work:
                continue
            has_free_slot = self._in_flight[state.backend_id] < state.max_concurrent
            for model in state.models:
                self._capacity[model] = self._capacity.get(model, 0) + state.max_concurrent
                hosts.setdefault(model, []).append(state)
                if has_free_slot:
                    self._free[model].add(state.backend_id)
        self._neighbours = {
            model: frozenset().union(*(state.models for state in serving)) for model, serving in hosts.items()
        }

    def serves(self, model: str) -> bool:
        """Whether any backend that accepts work serves `model` (busy or not)."""
        return model in self._capacity

    def capacity(self, model: str) -> int:
        return self._capacity.get(model, 0)

    def neighbours(self, model: str) -> frozenset[str]:
        """Models that compete with `model` for at least one backend's slots."""
        return self._neighbours.get(model, frozenset())

    def free_models(self) -> Iterable[str]:
        """Models for which some backend has a free slot now."""
        return self._free.keys()

    def models_of(self, backend_id: int) -> frozenset[str]:
        return self._states[backend_id].models

    def best_backend(self, model: str, exclude: frozenset[int] = frozenset()) -> int | None:
        """The best backend with a free slot for `model`, other than `exclude`; None if there is none."""
        candidates = self._free.get(model)
        if candidates and exclude:
            candidates = candidates - exclude
        if not candidates:
            return None
        if len(candidates) == 1:  # the usual case on a busy cluster: the slot just released
            return next(iter(candidates))
        return min(
            candidates,
            key=lambda backend_id: preference(
                self._states[backend_id],
                self._in_flight[backend_id],
                model in self._resident[backend_id],
                self._held[backend_id],
            ),
        )

    def knows(self, backend_id: int) -> bool:
        return backend_id in self._states

    def holds(self, request_id: str) -> bool:
        return request_id in self._slots

    def slot_of(self, request_id: str) -> Slot | None:
        return self._slots.get(request_id)

    def slots(self) -> Iterable[Slot]:
        return self._slots.values()

    def acquire(self, slot: Slot) -> None:
        """Record a grant: the backend loses a free slot and now holds the model in memory."""
        state = self._states[slot.backend_id]
        self._slots[slot.request_id] = slot
        self._in_flight[slot.backend_id] += 1
        if slot.model not in self._resident[slot.backend_id]:
            self._resident[slot.backend_id].add(slot.model)
            self._held[slot.backend_id] += 1
        if self._in_flight[slot.backend_id] >= state.max_concurrent:
            for model in state.models:
                backends = self._free.get(model)
                if backends is not None:
                    backends.discard(slot.backend_id)
                    if not backends:
                        del self._free[model]

    def release(self, request_id: str) -> Slot | None:
        """Free the request's slot; None if it holds none (never granted, or released already)."""
        slot = self._slots.pop(request_id, None)
        if slot is None:
            return None
        self._in_flight[slot.backend_id] -= 1
        state = self._states.get(slot.backend_id)
        if state is None:  # removed from the registry while this request ran
            if not self._in_flight[slot.backend_id]:
                del self._in_flight[slot.backend_id]
        elif state.accepts_work and self._in_flight[slot.backend_id] < state.max_concurrent:
            for model in state.models:
                self._free[model].add(slot.backend_id)
        return slot

    def snapshot(self) -> list[dict]:
        return [
            {
                "backend_id": backend_id,
                "in_flight": self._in_flight[backend_id],
                "max_concurrent": state.max_concurrent,
                "accepts_work": state.accepts_work,
                "resident": sorted(self._resident[backend_id]),
            }
            for backend_id, state in sorted(self._states.items())
        ]
