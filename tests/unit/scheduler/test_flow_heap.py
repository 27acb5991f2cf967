"""The heaps of flows behind each model's ring and its bursting flows: however far a shedding has
got, the head is the smallest live entry, and a heap holds a bounded multiple of its live entries."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from scheduler.wdrr import _FlowHeap


@dataclass(eq=False)
class Flow:
    name: int
    version: int = -1


class Model:
    """A `_FlowHeap` beside the plain truth: each flow's live entry, if it has one."""

    def __init__(self, flows: int) -> None:
        self.heap = _FlowHeap()
        self.flows = [Flow(n) for n in range(flows)]
        self.live: dict[int, tuple] = {}
        self.versions = 0

    def rekey(self, flow: Flow, key: int) -> None:
        self.versions += 1
        flow.version = self.versions
        self.live[flow.name] = (key, flow.version, flow)
        self.heap.push(self.live[flow.name])

    def close(self, flow: Flow) -> None:
        flow.version = -1
        self.live.pop(flow.name, None)

    def check_head(self) -> tuple | None:
        head = self.heap.head()
        assert head == min(self.live.values(), default=None)
        return head

    def pop(self) -> None:
        head = self.check_head()
        assert self.heap.pop_head() is head
        self.close(head[-1])

    def size(self) -> int:
        return len(self.heap._entries) + len(self.heap._older)


@pytest.mark.parametrize("seed", range(5))
def test_head_is_the_smallest_live_entry_through_every_shedding(seed):
    rng = random.Random(seed)
    model = Model(flows=300)
    for step in range(20_000):
        flow = rng.choice(model.flows)
        action = rng.random()
        if action < 0.6:
            model.rekey(flow, rng.randrange(1000) + step // 10)
        elif action < 0.7:
            model.close(flow)
        elif model.live:
            model.pop()
        model.check_head()
    while model.live:
        model.pop()
    assert model.heap.head() is None


def test_stale_entries_are_shed_as_flows_are_rekeyed_without_a_read():
    model = Model(flows=200)
    rng = random.Random(7)
    largest = 0
    for _ in range(100):
        for flow in model.flows:
            model.rekey(flow, rng.randrange(1000))
        largest = max(largest, model.size())
    assert largest <= 4 * len(model.flows) + 200
    while model.live:
        model.pop()
