"""Per-user limits inside the fair queue: a cap on running requests, a bound on waiting ones (issue 11)."""

from __future__ import annotations

import pytest

from scheduler import BackendState, QueueFull, Scheduler, SchedulerConfig

MODEL = "llama3.2"


def cluster(slots: int, **config) -> Scheduler:
    scheduler = Scheduler(SchedulerConfig(burst_cap=0, **config))
    scheduler.update_backends([BackendState(1, frozenset({MODEL}), max_concurrent=slots)])
    return scheduler


def running_of(scheduler: Scheduler, user_id: str) -> int:
    return sum(row["in_flight"] for row in scheduler.snapshot(0.0)["queues"] if row["user_id"] == user_id)


def test_a_user_at_its_running_cap_waits_in_the_queue_instead_of_taking_more_slots():
    scheduler = cluster(slots=8)
    for n in range(6):
        scheduler.submit(f"a{n}", "a", 1.0, MODEL, 100, now=0.0, max_running=2)

    granted = [grant.request_id for grant in scheduler.dispatch(0.0)]

    assert granted == ["a0", "a1"]
    assert scheduler.snapshot(0.0)["waiting"] == 4  # queued, not refused
    scheduler.release("a0", 100, now=1.0)
    assert [grant.request_id for grant in scheduler.dispatch(1.0)] == ["a2"]  # in order


def test_slots_a_capped_user_cannot_take_go_to_the_others_at_once():
    scheduler = cluster(slots=4)
    for n in range(6):
        scheduler.submit(f"a{n}", "a", 3.0, MODEL, 100, now=0.0, max_running=1)
        scheduler.submit(f"b{n}", "b", 1.0, MODEL, 100, now=0.0)

    grants = scheduler.dispatch(0.0)

    assert len(grants) == 4  # work-conserving: no slot idles while b waits
    assert sorted(grant.user_id for grant in grants) == ["a", "b", "b", "b"]


def test_a_capped_user_banks_no_turns_while_capped(simulation):
    """a (weight 3, cap 1) and b (weight 1) saturate 2 slots: a runs one request at a time, b takes the
    other slot. When a's cap is lifted, a gets its 3/4 from then on, not a catch-up run of the turns it
    could not take while capped (b keeps being served)."""
    sim = simulation([BackendState(1, frozenset({MODEL}), max_concurrent=2)], SchedulerConfig(burst_cap=0))
    caps = {"a": 1, "b": 0}
    original_submit = sim.scheduler.submit
    sim.scheduler.submit = lambda request_id, user_id, *args: original_submit(
        request_id, user_id, *args, max_running=caps[user_id])
    sim.keep_busy("a", MODEL, 100, weight=3.0, outstanding=8)
    sim.keep_busy("b", MODEL, 100, weight=1.0, outstanding=8)
    sim.run(until=60.0)

    most_running = max(
        sum(1 for f in sim.finished if f.user_id == "a" and f.granted_at <= t < f.finished_at)
        for t in [n / 10 for n in range(600)]
    )
    assert most_running == 1
    served = sim.served_tokens(since=5.0)
    assert served["a"] == pytest.approx(served["b"], rel=0.1)  # about one slot each: the cap binds

    caps["a"] = 0
    sim.run(until=70.0)
    after = [f for f in sim.finished if f.granted_at >= 60.5]
    b_grants = sorted(f.granted_at for f in after if f.user_id == "b")
    assert b_grants and b_grants[0] < 62.0  # no run of a's banked turns shuts b out
    shares = sim.shares(since=62.0)
    assert shares["a"] == pytest.approx(0.75, abs=0.05)


def test_a_cap_that_does_not_bind_leaves_the_shares_by_weight(simulation, jain):
    sim = simulation([BackendState(1, frozenset({MODEL}), max_concurrent=2)], SchedulerConfig(burst_cap=0))
    original_submit = sim.scheduler.submit
    sim.scheduler.submit = lambda *args: original_submit(*args, max_running=4, max_waiting=64)
    for user, weight in (("faculty", 3.0), ("staff", 2.0), ("student", 1.0)):
        sim.keep_busy(user, MODEL, 500, weight=weight, outstanding=12)
    sim.run(until=300.0)

    shares = sim.shares(since=10.0)
    assert shares["faculty"] == pytest.approx(0.5, abs=0.01)
    assert shares["staff"] == pytest.approx(1 / 3, abs=0.01)
    assert shares["student"] == pytest.approx(1 / 6, abs=0.01)



def test_only_a_request_beyond_the_waiting_bound_is_refused():
    scheduler = cluster(slots=2, max_queue_per_user=1000)
    accepted, refused = [], []
    for n in range(7):
        try:
            scheduler.submit(f"a{n}", "a", 1.0, MODEL, 100, now=0.0, max_waiting=3)
            scheduler.dispatch(0.0)
            accepted.append(n)
        except QueueFull as refusal:
            refused.append((n, refusal.retry_after_s))

    assert accepted == [0, 1, 2, 3, 4]  # two running, three waiting
    assert [n for n, _ in refused] == [5, 6]
    assert all(retry >= 1 for _, retry in refused)


def test_no_waiting_bound_when_it_is_zero():
    scheduler = cluster(slots=1, max_queue_per_user=1)
    for n in range(50):
        scheduler.submit(f"a{n}", "a", 1.0, MODEL, 100, now=0.0, max_waiting=0)
    assert scheduler.snapshot(0.0)["waiting"] == 50


def test_retry_after_for_a_full_queue_is_when_the_users_next_place_frees():
    """A student (weight 1 of 6) on 2 slots whose requests hold a slot 3 s: one of its places frees
    about every 3 / (2 × 1/6) = 9 s, whatever the backlog of the others."""
    scheduler = cluster(slots=2, max_queue_per_user=1000)
    for n in range(4):
        scheduler.submit(f"f{n}", "faculty", 3.0, MODEL, 100, now=0.0)
        scheduler.submit(f"s{n}", "staff", 2.0, MODEL, 100, now=0.0)
    scheduler.submit("u0", "student", 1.0, MODEL, 100, now=0.0, max_waiting=1)
    for grant in scheduler.dispatch(0.0):
        scheduler.release(grant.request_id, 100, now=3.0)
    scheduler.dispatch(3.0)

    with pytest.raises(QueueFull) as refused:
        scheduler.submit("u1", "student", 1.0, MODEL, 100, now=3.0, max_waiting=1)
    assert refused.value.retry_after_s == 9


def test_the_snapshot_shows_each_users_running_waiting_cap_weight_and_shares():
    scheduler = cluster(slots=2)
    for n in range(3):  # a quantum's worth each: one request per visit
        scheduler.submit(f"a{n}", "a", 3.0, MODEL, 1000, now=0.0, max_running=1)
        scheduler.submit(f"b{n}", "b", 1.0, MODEL, 1000, now=0.0, max_running=0)
    for grant in scheduler.dispatch(0.0):
        scheduler.release(grant.request_id, 1000, now=1.0)
    scheduler.dispatch(1.0)

    users = {row["user_id"]: row for row in scheduler.snapshot(1.0)["users"]}

    assert users["a"]["running"] == 1 and users["a"]["waiting"] == 1 and users["a"]["cap"] == 1
    assert users["b"]["running"] == 1 and users["b"]["waiting"] == 1 and users["b"]["cap"] is None
    assert users["a"]["weight"] == 3.0
    assert users["a"]["entitled_share"] == pytest.approx(0.75)
    assert users["a"]["share"] == pytest.approx(0.5)  # one request each served so far
