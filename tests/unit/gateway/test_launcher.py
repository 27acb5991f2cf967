"""The launcher's addon manager (addons/launcher.py, HookTable) hands an event only to the addons that have
its hook, looked up once per chain, and otherwise does what mitmproxy's own does with it; the launcher's
garbage collection settings."""

from __future__ import annotations

import asyncio
import gc
import logging

from mitmproxy import exceptions
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import taddons, tflow

from addons.launcher import YOUNG_COLLECTION_THRESHOLD, HookTable, collect_garbage_less_often


class Seeing:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    async def request(self, flow):
        await asyncio.sleep(0)
        self.seen.append(f"{self.name}.request")

    def response(self, flow):
        self.seen.append(f"{self.name}.response")


class Counting:
    """An addon with no flow hook that notes every attribute asked of it."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, name: str):
        self.asked.append(name)
        raise AttributeError(name)


class Parent:
    def __init__(self, *children) -> None:
        self.addons = list(children)


def dispatch(build, *rounds) -> None:
    """`build(table)` adds addons; then each round: a callable on the table, or a hook to trigger."""
    async def scenario():
        with taddons.context() as tctx:
            table = HookTable(tctx.master)
            build(table)
            for step in rounds:
                if isinstance(step, type):
                    await table.handle_lifecycle(step(tflow.tflow(resp=True)))
                else:
                    step(table)

    asyncio.run(scenario())


def test_an_event_reaches_the_addons_with_its_hook_in_chain_order_children_included():
    seen: list[str] = []
    counting = Counting()
    dispatch(lambda table: table.add(Seeing("a", seen), counting, Parent(Seeing("b", seen)), Seeing("c", seen)),
             HttpRequestHook, HttpResponseHook, HttpRequestHook)
    assert seen == ["a.request", "b.request", "c.request", "a.response", "b.response", "c.response",
                    "a.request", "b.request", "c.request"]
    # Each hook looked up once on the addon without it (mitmproxy's own asks for every event, and
    # for `update` after each): the second request event does not ask again.
    assert [name for name in counting.asked if name in ("request", "response", "update")] == ["request", "update", "response"]


def test_the_table_follows_the_chain_as_addons_come_and_go():
    seen: list[str] = []
    late, leaving = Seeing("late", seen), Seeing("leaving", seen)
    dispatch(lambda table: table.add(Seeing("a", seen), leaving),
             HttpRequestHook,
             lambda table: table.add(late),
             HttpRequestHook,
             lambda table: table.remove(leaving),
             HttpRequestHook)
    assert seen == ["a.request", "leaving.request",
                    "a.request", "leaving.request", "late.request",
                    "a.request", "late.request"]


def test_a_failing_addon_is_logged_and_the_next_still_runs_until_one_halts(caplog):
    seen: list[str] = []

    class Failing:
        def request(self, flow):
            raise RuntimeError("bug in request")

    class Halting:
        def request(self, flow):
            raise exceptions.AddonHalt()

    with caplog.at_level(logging.ERROR):
        dispatch(lambda table: table.add(Failing(), Seeing("a", seen), Halting(), Seeing("b", seen)), HttpRequestHook)
    assert seen == ["a.request"]
    assert "bug in request" in caplog.text


def test_the_gateway_freezes_what_start_up_made_and_collects_young_objects_less_often():
    threshold = gc.get_threshold()
    try:
        gc.unfreeze()
        collect_garbage_less_often()
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *threshold[1:])
        assert YOUNG_COLLECTION_THRESHOLD > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
