"""Burst credits: earned while idle in proportion to weight, capped, spent first, never starving others."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import BackendState, Scheduler, SchedulerConfig

CONFIG = SchedulerConfig(quantum=1000, burst_cap=4000, fairness_window_s=300)
NODE = BackendState(1, frozenset({"llama3.2"}), max_concurrent=4)


def credit_of(scheduler: Scheduler, user_id: str, now: float) -> float:
    return next(row["burst_credit"] for row in scheduler.snapshot(now)["users"] if row["user_id"] == user_id)


def spend_all_credit(scheduler: Scheduler, user_id: str, weight: float, now: float) -> str:
    """Submit and grant one request that costs exactly the user's full credit."""
    request_id = f"{user_id}-spend"
    scheduler.submit(request_id, user_id, weight, "llama3.2", CONFIG.burst_cap * weight, now)
    (grant,) = scheduler.dispatch(now)
    assert grant.burst
    return request_id


def test_burst_credit_accrues_in_proportion_to_weight_while_idle():
    scheduler = Scheduler(CONFIG)
    scheduler.update_backends([NODE])
    for user_id, weight in (("student", 1.0), ("faculty", 3.0)):
        scheduler.release(spend_all_credit(scheduler, user_id, weight, now=0.0), None, now=10.0)

    # a fairness window fills the cap: 4000 × weight per 300 s; 30 s idle earn a tenth of it
    assert credit_of(scheduler, "student", 40.0) == 400.0
    assert credit_of(scheduler, "faculty", 40.0) == 1200.0


def test_burst_credit_is_capped():
    scheduler = Scheduler(CONFIG)
    scheduler.update_backends([BackendState(1, frozenset({"llama3.2"}), max_concurrent=8)])
    for user_id in ("staff", "other staff"):
        scheduler.release(spend_all_credit(scheduler, user_id, 2.0, now=0.0), None, now=1.0)

    long_idle = 10 * CONFIG.fairness_window_s
    scheduler.submit("at-cap", "staff", 2.0, "llama3.2", 2.0 * CONFIG.burst_cap, long_idle)
    scheduler.submit("over-cap", "other staff", 2.0, "llama3.2", 2.0 * CONFIG.burst_cap + 1, long_idle)
    grants = {grant.request_id: grant for grant in scheduler.dispatch(long_idle)}
    assert grants["at-cap"].burst
    assert not grants["over-cap"].burst


def test_no_burst_credit_accrues_while_a_request_runs():
    scheduler = Scheduler(CONFIG)
    scheduler.update_backends([NODE])
    request_id = spend_all_credit(scheduler, "student", 1.0, now=0.0)

    assert credit_of(scheduler, "student", 100.0) == 0.0
    scheduler.release(request_id, None, now=100.0)
    assert credit_of(scheduler, "student", 130.0) == 400.0


def test_burst_credit_is_spent_before_the_round_robin():
    scheduler = Scheduler(CONFIG)
    scheduler.update_backends([BackendState(1, frozenset({"llama3.2"}), max_concurrent=8)])
    for n in range(5):  # the first four fit the 4000-token credit of a weight-1 user
        scheduler.submit(f"r{n}", "student", 1.0, "llama3.2", 1000, now=0.0)

    grants = scheduler.dispatch(0.0)
    assert [grant.burst for grant in grants] == [True, True, True, True, False]
    assert [grant.request_id for grant in grants] == ["r0", "r1", "r2", "r3", "r4"]


def test_underestimate_released_while_idle_is_taken_from_burst_credit():
    scheduler = Scheduler(CONFIG)
    scheduler.update_backends([NODE])
    scheduler.submit("r", "student", 1.0, "llama3.2", 1000, now=0.0)
    scheduler.dispatch(0.0)
    scheduler.release("r", 2500, now=0.0)

    assert credit_of(scheduler, "student", 0.0) == 4000.0 - 2500.0


def test_returning_user_is_dispatched_at_the_next_free_slot(simulation):
    sim = simulation([NODE], config=CONFIG)
    for n in range(10):  # ten heavy users keep every slot busy with 10-second requests
        sim.keep_busy(f"heavy{n}", "llama3.2", cost=1000, outstanding=8)
    returns = [sim.submit_at(at, "interactive", "llama3.2", cost=300) for at in (600.0, 1200.0, 1800.0)]
    sim.run(2400.0)

    for request_id in returns:
        arrived = next(done.submitted_at for done in sim.finished if done.request_id == request_id)
        first_grant_after_arrival = next(grant for at, grant in sim.grants if at >= arrived)
        assert first_grant_after_arrival.request_id == request_id
        assert first_grant_after_arrival.burst
        assert first_grant_after_arrival.waited_s <= 1000 / sim.tokens_per_s


def test_a_backend_never_grants_two_bursts_in_a_row_while_the_round_robin_waits():
    scheduler = Scheduler(CONFIG)
    scheduler.update_backends([BackendState(1, frozenset({"llama3.2"}), max_concurrent=1)])
    scheduler.submit("heavy-0", "heavy", 1.0, "llama3.2", 4000, now=0.0)
    (running,) = scheduler.dispatch(0.0)  # spends heavy's credit; its next requests queue in the ring
    for n in range(1, 4):
        scheduler.submit(f"heavy-{n}", "heavy", 1.0, "llama3.2", 1000, now=0.0)
    for n in range(3):
        scheduler.submit(f"newcomer{n}", f"newcomer{n}", 1.0, "llama3.2", 500, now=1.0)

    granted = [running]
    for now in range(2, 8):
        scheduler.release(running.request_id, None, now)
        (running,) = scheduler.dispatch(now)
        granted.append(running)
    assert [grant.burst for grant in granted] == [True, False, True, False, True, False, True]
    assert [grant.user_id for grant in granted if grant.burst][1:] == ["newcomer0", "newcomer1", "newcomer2"]


@settings(max_examples=40, deadline=None)
@given(
    slots=st.integers(1, 3),
    arrivals=st.lists(  # (when, who, how many at once): returns from idle, clustered or spread
        st.tuples(st.integers(0, 40).map(lambda slot: 10.0 * slot), st.integers(0, 5), st.integers(1, 6)),
        min_size=1,
        max_size=30,
    ),
)
def test_burst_credits_never_starve_a_backlogged_user(simulation, slots, arrivals):
    """Equal weights and requests of one quantum: DRR gives every flow one grant per round, and
    bursts at most one grant between two round-robin grants, so between two grants to a backlogged
    user at most 2 × (other users) + 1 other grants happen, however arrivals are timed."""
    config = SchedulerConfig(quantum=1000, burst_cap=5000, fairness_window_s=60, max_queue_per_user=1000)
    sim = simulation([BackendState(1, frozenset({"llama3.2"}), max_concurrent=slots)], config=config)
    sim.keep_busy("victim", "llama3.2", cost=1000, outstanding=2 * slots, until=500.0)
    for at, user, count in arrivals:
        for _ in range(count):
            sim.submit_at(at, f"returner{user}", "llama3.2", cost=1000)
    sim.run(10_000.0)

    assert sim.scheduler.snapshot(sim.now)["waiting"] == 0  # everything submitted was served
    others = len({user for _, user, _ in arrivals})
    victim_turns = [
        index for index, (_, grant) in enumerate(sim.grants) if grant.user_id == "victim" and not grant.burst
    ]
    for previous, following in itertools.pairwise(victim_turns):
        assert following - previous - 1 <= 2 * others + 1
