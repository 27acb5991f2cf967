"""What both counter stores promise, in virtual time: the in-process one and the Redis one alike."""

from __future__ import annotations

import asyncio
import time

from addons.limits import REFUSED, RESERVED, UNKNOWN, quota_keys_expire_at

PERIOD = "2025-06"
EXPIRES = quota_keys_expire_at(PERIOD) + 10 * 365 * 86400  # far enough that a test never sees Redis drop the keys


def test_rate_window_admits_the_limit_and_says_when_a_slot_frees(run_with_store, clock):
    async def scenario(store):
        waits = []
        for _ in range(3):
            waits.append(await store.take_rate(7, 3, 60, f"r{clock.now}"))
            clock.advance(10)
        waits.append(await store.take_rate(7, 3, 60, "refused"))  # at +30: the first leaves at +60
        clock.advance(30)
        waits.append(await store.take_rate(7, 3, 60, "again"))
        waits.append(await store.take_rate(8, 3, 60, "other key"))
        return waits

    assert run_with_store(scenario) == [0, 0, 0, 30, 0, 0]


def test_a_budget_is_unknown_until_started_and_starting_twice_keeps_the_first(run_with_store):
    async def scenario(store):
        first = await store.reserve(1, PERIOD, 10, "a", 30)
        await store.start_ledger(1, PERIOD, 100, 25, EXPIRES)
        await store.start_ledger(1, PERIOD, 999, 0, EXPIRES)  # another gateway's late start changes nothing
        return first, await store.reserve(1, PERIOD, 10, "a", 30)

    assert run_with_store(scenario) == ((UNKNOWN, 0), (RESERVED, 65))


def test_reservations_fit_the_budget_whole_and_settle_to_real_usage(run_with_store):
    async def scenario(store):
        await store.start_ledger(1, PERIOD, 100, 0, EXPIRES)
        outcomes = [await store.reserve(1, PERIOD, 30, f"r{i}", 30) for i in range(4)]
        await store.settle(1, PERIOD, "r0", 12)  # used 12 of the 30 it reserved
        after = await store.reserve(1, PERIOD, 28, "r4", 30)
        standing = (await store.standings([(1, PERIOD)]))[(1, PERIOD)]
        return outcomes, after, (standing.budget, standing.used, standing.reserved)

    outcomes, after, standing = run_with_store(scenario)
    assert [o.state for o in outcomes] == [RESERVED, RESERVED, RESERVED, REFUSED]
    assert outcomes[3].remaining == 10
    assert after.state == RESERVED
    assert standing == (100, 12, 88)


def test_fifty_concurrent_reservations_take_exactly_what_fits(run_with_store):
    async def scenario(store):
        await store.start_ledger(1, PERIOD, 1000, 0, EXPIRES)
        outcomes = await asyncio.gather(*(store.reserve(1, PERIOD, 100, f"r{i}", 30) for i in range(50)))
        return sum(o.state == RESERVED for o in outcomes)

    assert run_with_store(scenario) == 10


def test_a_budget_raised_under_a_ledger_admits_more(run_with_store):
    async def scenario(store):
        await store.start_ledger(1, PERIOD, 100, 90, EXPIRES)
        refused = await store.reserve(1, PERIOD, 50, "a", 30)
        await store.set_budgets({(1, PERIOD): 1100, (2, PERIOD): 5})  # user 2 has no ledger: stays unknown
        return refused.state, await store.reserve(1, PERIOD, 50, "a", 30), await store.reserve(2, PERIOD, 1, "b", 30)

    assert run_with_store(scenario) == (REFUSED, (RESERVED, 960), (UNKNOWN, 0))


def test_renewal_reports_the_leases_it_no_longer_holds(run_with_store):
    async def scenario(store):
        await store.start_ledger(1, PERIOD, 100, 0, EXPIRES)
        await store.reserve(1, PERIOD, 10, "a", 30)
        return store.shared, await store.renew([(1, PERIOD, "a"), (1, PERIOD, "never reserved")], 30)

    shared, lost = run_with_store(scenario)
    assert lost == (["never reserved"] if shared else [])  # in process nothing expires


def test_stores_answer_quickly(run_with_store):
    """A sanity bound, not a benchmark (a loaded test machine must pass it too): milliseconds at most."""
    async def scenario(store):
        await store.start_ledger(1, PERIOD, 10**9, 0, EXPIRES)
        started = time.perf_counter()
        for i in range(200):
            await store.take_rate(1, 10**6, 60, f"r{i}")
            await store.reserve(1, PERIOD, 1, f"r{i}", 30)
        return (time.perf_counter() - started) / 400

    assert run_with_store(scenario) < 0.02


def test_a_rate_token_given_back_frees_its_own_place_in_the_window(run_with_store, clock):
    async def scenario(store):
        await store.take_rate(7, 2, 60, "kept")
        clock.advance(10)
        await store.take_rate(7, 2, 60, "refused later")
        full = await store.take_rate(7, 2, 60, "over")
        await store.give_back_rate(7, "refused later")
        await store.give_back_rate(7, "refused later")  # twice: harmless
        clock.advance(10)
        admitted = await store.take_rate(7, 2, 60, "next")
        over = await store.take_rate(7, 2, 60, "over again")  # "kept" (at 0) leaves first: at +60
        return full, admitted, over

    assert run_with_store(scenario) == (50, 0, 40)


def test_a_ledger_takes_the_larger_used_from_the_database(run_with_store):
    async def scenario(store):
        await store.sync_used(1, PERIOD, 500)  # no ledger yet: nothing to do (it loads the row when started)
        await store.start_ledger(1, PERIOD, 1000, 100, EXPIRES)
        await store.sync_used(1, PERIOD, 700)
        after_raise = await store.reserve(1, PERIOD, 301, "a", 30)
        await store.sync_used(1, PERIOD, 50)  # the database lags: never lowered
        return after_raise, (await store.standings([(1, PERIOD)]))[1, PERIOD].used

    outcome, used = run_with_store(scenario)
    assert outcome.state == REFUSED and outcome.remaining == 300
    assert used == 700
