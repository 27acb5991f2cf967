"""The round robin itself: order of turns, deficits, and a user's queue entering and leaving it."""

from __future__ import annotations

import pytest

from scheduler import BackendState, Scheduler, SchedulerConfig

NO_BURSTS = SchedulerConfig(quantum=1000, burst_cap=0)
ONE_SLOT = BackendState(1, frozenset({"llama3.2"}), max_concurrent=1)


def serve_one_at_a_time(scheduler: Scheduler, first_grant, count: int, start: float = 1.0) -> list[str]:
    """Release the running request and grant the next, `count` times; returns who got each turn."""
    running, users = first_grant, []
    for step in range(count):
        now = start + step
        scheduler.release(running.request_id, None, now)
        (running,) = scheduler.dispatch(now)
        users.append(running.user_id)
    return users


def flow_row(scheduler: Scheduler, user_id: str, now: float) -> dict:
    return next(row for row in scheduler.snapshot(now)["queues"] if row["user_id"] == user_id)


def test_equal_users_take_turns():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    for user_id in ("a", "b", "c"):
        for n in range(3):
            scheduler.submit(f"{user_id}{n}", user_id, 1.0, "llama3.2", 1000, now=0.0)
    (first,) = scheduler.dispatch(0.0)

    assert [first.user_id, *serve_one_at_a_time(scheduler, first, 8)] == ["a", "b", "c"] * 3


def test_heavier_user_takes_more_turns_per_round():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    for n in range(6):
        scheduler.submit(f"f{n}", "faculty", 3.0, "llama3.2", 1000, now=0.0)
        scheduler.submit(f"s{n}", "student", 1.0, "llama3.2", 1000, now=0.0)
    (first,) = scheduler.dispatch(0.0)

    turns = [first.user_id, *serve_one_at_a_time(scheduler, first, 7)]
    assert turns == ["faculty"] * 3 + ["student"] + ["faculty"] * 3 + ["student"]


def test_a_newly_active_user_gets_its_first_turn_at_the_end_of_the_current_round():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    for user_id in ("a", "b", "c"):
        for n in range(3):
            scheduler.submit(f"{user_id}{n}", user_id, 1.0, "llama3.2", 1000, now=0.0)
    (first,) = scheduler.dispatch(0.0)
    scheduler.submit("x0", "x", 1.0, "llama3.2", 1000, now=0.5)

    assert serve_one_at_a_time(scheduler, first, 4) == ["b", "c", "x", "a"]


def test_emptying_and_refilling_a_queue_earns_no_extra_turn():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    for user_id in ("a", "b", "c"):
        for n in range(3):
            scheduler.submit(f"{user_id}{n}", user_id, 1.0, "llama3.2", 1000, now=0.0)
    scheduler.submit("x0", "x", 1.0, "llama3.2", 1000, now=0.0)
    running, turns = scheduler.dispatch(0.0)[0], []
    for step in range(1, 9):
        scheduler.release(running.request_id, None, step)
        (running,) = scheduler.dispatch(step)
        turns.append(running.user_id)
        if running.user_id == "x":  # x's queue just emptied: it sends its next request at once
            scheduler.submit(f"x{step}", "x", 1.0, "llama3.2", 1000, now=step)

    assert turns == ["b", "c", "x", "a", "b", "c", "x", "a"]


def test_request_bigger_than_a_quantum_waits_for_enough_visits():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    scheduler.submit("big", "big", 1.0, "llama3.2", 2500, now=0.0)  # needs three visits
    for n in range(6):
        scheduler.submit(f"small{n}", "small", 1.0, "llama3.2", 1000, now=0.0)
    (first,) = scheduler.dispatch(0.0)

    assert [first.user_id, *serve_one_at_a_time(scheduler, first, 3)] == ["small", "small", "big", "small"]


def test_deficit_is_reset_when_a_users_queue_empties():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    scheduler.submit("a", "user", 1.0, "llama3.2", 1000, now=0.0)
    scheduler.submit("b", "user", 1.0, "llama3.2", 600, now=0.0)
    scheduler.submit("o1", "other", 1.0, "llama3.2", 1000, now=0.0)
    scheduler.submit("o2", "other", 1.0, "llama3.2", 1000, now=0.0)
    (first,) = scheduler.dispatch(0.0)
    turns = [first.request_id]
    running = first
    for now in (1.0, 2.0):
        scheduler.release(running.request_id, None, now)
        (running,) = scheduler.dispatch(now)
        turns.append(running.request_id)
    assert turns == ["a", "o1", "b"]  # b leaves 1000 - 600 = 400 of the user's deficit unused

    scheduler.submit("c", "user", 1.0, "llama3.2", 100, now=2.5)
    assert flow_row(scheduler, "user", 2.5)["deficit"] == 0.0
    assert serve_one_at_a_time(scheduler, running, 2, start=3.0) == ["other", "user"]


def test_requests_of_one_user_and_model_are_granted_in_order():
    scheduler = Scheduler(SchedulerConfig(quantum=1000, burst_cap=1500))
    scheduler.update_backends([BackendState(1, frozenset({"llama3.2"}), max_concurrent=8)])
    for n, cost in enumerate([500, 2000, 100, 900, 3000, 50]):
        scheduler.submit(f"r{n}", "user", 1.0, "llama3.2", cost, now=0.0)

    assert [grant.request_id for grant in scheduler.dispatch(0.0)] == [f"r{n}" for n in range(6)]


def test_debt_from_an_underestimate_follows_the_user_after_its_queue_empties():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    scheduler.submit("under", "user", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)
    scheduler.release("under", 3100, now=1.0)  # 3000 tokens more than expected, nothing queued
    for n in range(3):
        scheduler.submit(f"other{n}", "other", 1.0, "llama3.2", 1000, now=1.0)
    scheduler.submit("next", "user", 1.0, "llama3.2", 1000, now=1.0)

    assert flow_row(scheduler, "user", 1.0)["deficit"] == pytest.approx(-3000.0, abs=1.0)
    (first,) = scheduler.dispatch(1.0)
    assert [first.user_id, *serve_one_at_a_time(scheduler, first, 3, start=2.0)] == ["other"] * 3 + ["user"]


def test_a_weight_change_applies_to_requests_already_queued():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    for n in range(8):
        scheduler.submit(f"p{n}", "promoted", 1.0, "llama3.2", 1000, now=0.0)
        scheduler.submit(f"s{n}", "student", 1.0, "llama3.2", 1000, now=0.0)
    scheduler.submit("p-late", "promoted", 3.0, "llama3.2", 1000, now=0.0)  # an admin set weight 3
    (first,) = scheduler.dispatch(0.0)

    turns = [first.user_id, *serve_one_at_a_time(scheduler, first, 7)]
    assert turns.count("promoted") == 6


def test_debt_outlives_a_cancelled_queue_less_the_turns_it_waited():
    scheduler = Scheduler(NO_BURSTS)
    scheduler.update_backends([ONE_SLOT])
    scheduler.submit("u1", "user", 1.0, "llama3.2", 100, now=0.0)
    for n in range(6):
        scheduler.submit(f"o{n}", "other", 1.0, "llama3.2", 1000, now=0.0)
    (running,) = scheduler.dispatch(0.0)
    assert running.request_id == "u1"
    scheduler.submit("u2", "user", 1.0, "llama3.2", 1000, now=0.5)
    scheduler.release("u1", 3100, now=1.0)  # 3000 more than expected, charged to the open queue
    assert flow_row(scheduler, "user", 1.0)["deficit"] == -3000.0

    (running,) = scheduler.dispatch(1.0)
    assert serve_one_at_a_time(scheduler, running, 2, start=2.0) == [
        "other",
        "other",
    ]  # one turn of user's passed
    scheduler.cancel("u2", now=4.0)
    scheduler.submit("u3", "user", 1.0, "llama3.2", 1000, now=5.0)
    assert flow_row(scheduler, "user", 5.0)["deficit"] == -2000.0
