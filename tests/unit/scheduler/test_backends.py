"""Where a granted request goes: only to a backend that can take it, and to the best of those."""

from __future__ import annotations

import pytest

from scheduler import BackendState, Scheduler

MODEL = frozenset({"llama3.2"})


def first_backend_for(backends: list[BackendState], *, already_running: int = 0) -> int:
    """The backend a fresh request is granted after `already_running` requests took slots."""
    scheduler = Scheduler()
    scheduler.update_backends(backends)
    for n in range(already_running + 1):
        scheduler.submit(f"r{n}", f"user{n}", 1.0, "llama3.2", 100, now=0.0)
    grants = scheduler.dispatch(0.0)
    return grants[already_running].backend_id


def test_resident_backend_is_preferred_over_a_less_loaded_one():
    busy_but_loaded = BackendState(1, MODEL, max_concurrent=4, resident=MODEL, gpu_utilization=0.9, waiting=3)
    idle_but_cold = BackendState(2, MODEL, max_concurrent=4)

    assert first_backend_for([idle_but_cold, busy_but_loaded]) == 1


@pytest.mark.parametrize(
    "busier",
    [
        {"waiting": 2},  # the engine's own queue
        {"kv_cache_usage": 0.8},
        {"gpu_utilization": 0.7},
    ],
)
def test_less_loaded_backend_wins_among_residents(busier):
    calm = BackendState(1, MODEL, max_concurrent=4, resident=MODEL, latency_ema_ms=900.0)
    busy = BackendState(2, MODEL, max_concurrent=4, resident=MODEL, latency_ema_ms=100.0, **busier)

    assert first_backend_for([busy, calm]) == 1


def test_in_flight_share_of_slots_counts_as_load():
    small = BackendState(1, MODEL, max_concurrent=2, resident=MODEL)
    large = BackendState(2, MODEL, max_concurrent=8, resident=MODEL, latency_ema_ms=5000.0)

    # after one grant on each: small is 1/2 busy, large 1/8: the next goes to large
    assert first_backend_for([small, large], already_running=2) == 2


def test_lower_latency_breaks_load_ties():
    slow = BackendState(1, MODEL, max_concurrent=4, resident=MODEL, latency_ema_ms=800.0, priority=5)
    fast = BackendState(2, MODEL, max_concurrent=4, resident=MODEL, latency_ema_ms=200.0)

    assert first_backend_for([slow, fast]) == 2


def test_admin_priority_breaks_the_remaining_ties():
    plain = BackendState(1, MODEL, max_concurrent=4, resident=MODEL, latency_ema_ms=200.0)
    favoured = BackendState(2, MODEL, max_concurrent=4, resident=MODEL, latency_ema_ms=200.0, priority=1)

    assert first_backend_for([plain, favoured]) == 2


def test_dispatch_marks_the_model_resident_where_it_was_sent():
    scheduler = Scheduler()
    cold = [BackendState(1, MODEL, max_concurrent=4), BackendState(2, MODEL, max_concurrent=4)]
    scheduler.update_backends(cold)
    scheduler.submit("r0", "a", 1.0, "llama3.2", 100, now=0.0)
    (first,) = scheduler.dispatch(0.0)
    scheduler.release("r0", None, now=1.0)

    scheduler.submit("r1", "b", 1.0, "llama3.2", 100, now=2.0)
    (second,) = scheduler.dispatch(2.0)
    assert second.backend_id == first.backend_id  # now resident there, so preferred
    assert scheduler.snapshot(2.0)["backends"][first.backend_id - 1]["resident"] == ["llama3.2"]


def test_a_model_nobody_holds_goes_where_fewest_models_are_held():
    models = frozenset({"llama3.2", "mistral", "phi3"})
    holds_two = BackendState(1, models, max_concurrent=4, resident=frozenset({"llama3.2", "mistral"}))
    holds_one = BackendState(2, models, max_concurrent=4, resident=frozenset({"mistral"}), gpu_utilization=0.5)
    scheduler = Scheduler()
    scheduler.update_backends([holds_two, holds_one])
    scheduler.submit("r0", "a", 1.0, "phi3", 100, now=0.0)

    assert [grant.backend_id for grant in scheduler.dispatch(0.0)] == [2]  # fewer models beats less load


def test_two_cold_nodes_asked_for_two_models_in_turn_take_one_each():
    models = frozenset({"llama3.2", "mistral"})
    scheduler = Scheduler()
    scheduler.update_backends([BackendState(1, models, max_concurrent=4), BackendState(2, models, max_concurrent=4)])
    placed = {}
    for n, model in enumerate(["llama3.2", "mistral"] * 4):
        scheduler.submit(f"r{n}", "a", 1.0, model, 100, now=float(n))
        (grant,) = scheduler.dispatch(float(n))
        placed.setdefault(model, set()).add(grant.backend_id)
        scheduler.release(f"r{n}", None, now=n + 0.5)

    assert placed == {"llama3.2": {1}, "mistral": {2}}


def test_models_held_counts_models_spelt_several_ways_once():
    spelt_twice = frozenset({"llama3.2", "llama3.2:latest"})
    models = spelt_twice | {"phi3"}
    one_model_two_names = BackendState(1, models, max_concurrent=4, resident=spelt_twice, models_held=1)
    other_model = BackendState(
        2, models | {"qwen2.5:7b"}, max_concurrent=4, resident=frozenset({"qwen2.5:7b"}), latency_ema_ms=1.0
    )
    scheduler = Scheduler()
    scheduler.update_backends([one_model_two_names, other_model])
    scheduler.submit("r0", "a", 1.0, "phi3", 100, now=0.0)

    # Both hold one model: the tie goes on to latency, where only backend 2 has a measurement.
    assert [grant.backend_id for grant in scheduler.dispatch(0.0)] == [2]


@pytest.mark.parametrize("unavailable", [{"healthy": False}, {"enabled": False}, {"draining": True}])
def test_backend_that_does_not_accept_work_is_never_granted(unavailable):
    scheduler = Scheduler()
    scheduler.update_backends(
        [
            BackendState(1, MODEL, max_concurrent=8, resident=MODEL, **unavailable),
            BackendState(2, MODEL, max_concurrent=1),
        ]
    )
    for n in range(3):
        scheduler.submit(f"r{n}", f"user{n}", 1.0, "llama3.2", 100, now=0.0)

    assert [grant.backend_id for grant in scheduler.dispatch(0.0)] == [2]


def test_backend_is_never_granted_a_model_it_does_not_serve():
    scheduler = Scheduler()
    scheduler.update_backends(
        [
            BackendState(1, frozenset({"qwen2.5"}), max_concurrent=8),
            BackendState(2, MODEL, max_concurrent=1),
        ]
    )
    for n in range(3):
        scheduler.submit(f"r{n}", f"user{n}", 1.0, "llama3.2", 100, now=0.0)

    assert [grant.backend_id for grant in scheduler.dispatch(0.0)] == [2]


def test_backend_update_keeps_slots_already_granted():
    scheduler = Scheduler()
    scheduler.update_backends([BackendState(1, MODEL, max_concurrent=2)])
    for n in range(4):
        scheduler.submit(f"r{n}", f"user{n}", 1.0, "llama3.2", 100, now=0.0)
    assert len(scheduler.dispatch(0.0)) == 2

    scheduler.update_backends([BackendState(1, MODEL, max_concurrent=3, latency_ema_ms=120.0)])
    assert len(scheduler.dispatch(1.0)) == 1  # 2 still held, one more fits
    scheduler.update_backends([BackendState(1, MODEL, max_concurrent=1)])
    scheduler.release("r0", None, now=2.0)
    assert scheduler.dispatch(2.0) == []  # 2 still running on a backend now limited to 1
    scheduler.release("r1", None, now=3.0)
    scheduler.release("r2", None, now=3.0)
    assert len(scheduler.dispatch(3.0)) == 1


def test_request_on_a_removed_backend_releases_cleanly():
    scheduler = Scheduler()
    scheduler.update_backends(
        [BackendState(1, MODEL, max_concurrent=1), BackendState(2, MODEL, max_concurrent=1)]
    )
    for n in range(2):
        scheduler.submit(f"r{n}", f"user{n}", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)

    scheduler.update_backends([BackendState(2, MODEL, max_concurrent=1)])
    assert scheduler.release("r0", None, now=1.0)
    assert scheduler.release("r1", None, now=1.0)
    assert scheduler.snapshot(1.0)["in_flight"] == 0


def test_backend_given_twice_is_refused():
    with pytest.raises(ValueError, match="backend 1 given twice"):
        Scheduler().update_backends([BackendState(1, MODEL, max_concurrent=1)] * 2)


def test_a_backend_with_no_slot_here_still_serves_its_model_and_its_requests_wait():
    """A gateway's share of a backend while Redis is away can be 0: its requests wait for a slot (then get
    one once the share grows), never 'no healthy backend'."""
    scheduler = Scheduler()
    scheduler.update_backends([BackendState(1, MODEL, max_concurrent=0)])
    scheduler.submit("r0", "user0", 1.0, "llama3.2", 100, now=0.0)
    assert scheduler.dispatch(0.0) == []
    scheduler.update_backends([BackendState(1, MODEL, max_concurrent=1)])
    assert [grant.request_id for grant in scheduler.dispatch(1.0)] == ["r0"]
