"""A request's life in the scheduler: queued, granted or cancelled or expired, released once."""

from __future__ import annotations

import pytest

from scheduler import BackendState, NoBackend, QueueFull, Rejected, Scheduler, SchedulerConfig

NODE = BackendState(1, frozenset({"llama3.2"}), max_concurrent=1)


@pytest.fixture
def scheduler() -> Scheduler:
    scheduler = Scheduler(SchedulerConfig(max_queue_per_user=3, max_wait_s=60))
    scheduler.update_backends([NODE])
    return scheduler


def test_cancelled_request_is_never_granted(scheduler):
    scheduler.submit("running", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.submit("left", "b", 1.0, "llama3.2", 100, now=0.0)
    scheduler.submit("stays", "b", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)

    assert scheduler.cancel("left", now=1.0)
    scheduler.release("running", None, now=2.0)
    assert [grant.request_id for grant in scheduler.dispatch(2.0)] == ["stays"]


def test_cancel_answers_false_for_a_request_that_is_not_waiting(scheduler):
    scheduler.submit("granted", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)

    assert not scheduler.cancel("granted", now=1.0)
    assert not scheduler.cancel("never-seen", now=1.0)
    assert scheduler.snapshot(1.0)["in_flight"] == 1


def test_releasing_twice_frees_only_one_slot(scheduler):
    scheduler.submit("first", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)

    assert scheduler.release("first", 120, now=1.0)
    assert not scheduler.release("first", 120, now=1.0)
    assert not scheduler.release("never-granted", 120, now=1.0)
    (backend,) = scheduler.snapshot(1.0)["backends"]
    assert backend["in_flight"] == 0

    for n in range(2):
        scheduler.submit(f"next{n}", "b", 1.0, "llama3.2", 100, now=2.0)
    assert len(scheduler.dispatch(2.0)) == 1  # still one slot, not two


def test_requests_waiting_longer_than_max_wait_expire(scheduler):
    scheduler.submit("running", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.submit("old", "b", 1.0, "llama3.2", 100, now=0.0)
    scheduler.submit("young", "c", 1.0, "llama3.2", 100, now=30.0)
    scheduler.dispatch(30.0)

    assert scheduler.expired(now=60.0) == []
    assert scheduler.expired(now=61.0) == ["old"]
    scheduler.release("running", None, now=62.0)
    assert [grant.request_id for grant in scheduler.dispatch(62.0)] == ["young"]
    assert scheduler.expired(now=1000.0) == []


def test_queue_full_is_rejected_with_a_retry_after(scheduler):
    for n in range(4):  # one granted, three waiting: the limit
        scheduler.submit(f"r{n}", "a", 1.0, "llama3.2", 100, now=0.0)
        scheduler.dispatch(0.0)

    with pytest.raises(QueueFull, match=r"3 already wait for a slot \(limit 3\)") as rejected:
        scheduler.submit("one-too-many", "a", 1.0, "llama3.2", 100, now=0.0)
    assert rejected.value.retry_after_s >= 1
    scheduler.submit("someone-else", "b", 1.0, "llama3.2", 100, now=0.0)  # the limit is per user


def test_model_no_backend_can_serve_is_rejected(scheduler):
    with pytest.raises(NoBackend, match="no healthy backend serves 'qwen2.5'") as rejected:
        scheduler.submit("r", "a", 1.0, "qwen2.5", 100, now=0.0)
    assert isinstance(rejected.value, Rejected)
    assert rejected.value.retry_after_s > 0


def test_model_whose_backends_are_all_unhealthy_is_rejected(scheduler):
    scheduler.update_backends([BackendState(1, frozenset({"llama3.2"}), max_concurrent=1, healthy=False)])

    with pytest.raises(NoBackend):
        scheduler.submit("r", "a", 1.0, "llama3.2", 100, now=0.0)


def test_queued_requests_wait_through_an_outage_and_go_when_a_backend_returns(scheduler):
    scheduler.submit("queued", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.update_backends([BackendState(1, frozenset({"llama3.2"}), max_concurrent=1, healthy=False)])
    assert scheduler.dispatch(0.0) == []

    scheduler.update_backends([NODE])
    assert [grant.request_id for grant in scheduler.dispatch(5.0)] == ["queued"]


def test_a_request_id_in_use_is_refused(scheduler):
    scheduler.submit("same", "a", 1.0, "llama3.2", 100, now=0.0)
    with pytest.raises(ValueError, match="already queued or running"):
        scheduler.submit("same", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)
    with pytest.raises(ValueError, match="already queued or running"):
        scheduler.submit("same", "a", 1.0, "llama3.2", 100, now=0.0)


@pytest.mark.parametrize(
    ("weight", "cost", "complaint"), [(0.0, 100, "weight"), (1.0, 0, "cost"), (-1.0, 100, "weight")]
)
def test_weight_and_cost_must_be_positive(scheduler, weight, cost, complaint):
    with pytest.raises(ValueError, match=complaint):
        scheduler.submit("r", "a", weight, "llama3.2", cost, now=0.0)


@pytest.mark.parametrize(
    "knobs",
    [
        {"quantum": 0},
        {"burst_cap": -1},
        {"fairness_window_s": 0},
        {"max_queue_per_user": -1},
        {"max_wait_s": -5},
    ],
)
def test_config_refuses_values_that_cannot_work(knobs):
    (name,) = knobs
    with pytest.raises(ValueError, match=name):
        SchedulerConfig(**knobs)


def test_retry_after_grows_with_the_backlog(scheduler):
    scheduler.submit("r0", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)
    scheduler.release("r0", None, now=10.0)  # a request holds the slot 10 s
    short = scheduler.retry_after_s("llama3.2")
    for n in range(3):
        for user_id in ("a", "b", "c"):
            scheduler.submit(f"{user_id}{n}", user_id, 1.0, "llama3.2", 100, now=10.0)

    assert short == 1
    assert scheduler.retry_after_s("llama3.2") == 90  # 9 waiting on one slot of 10 s
    assert scheduler.retry_after_s("unknown") == 30


def test_snapshot_reports_queues_users_and_backends(scheduler):
    scheduler.submit("running", "a", 2.0, "llama3.2", 100, now=0.0)
    scheduler.submit("waiting", "a", 2.0, "llama3.2", 100, now=1.0)
    scheduler.dispatch(1.0)
    scheduler.release("running", 150, now=4.0)
    scheduler.dispatch(4.0)
    scheduler.submit("again", "a", 2.0, "llama3.2", 100, now=5.0)

    snapshot = scheduler.snapshot(now=8.0)
    assert snapshot["waiting"] == 1 and snapshot["in_flight"] == 1
    (queue,) = snapshot["queues"]
    assert (queue["user_id"], queue["model"], queue["waiting"], queue["in_flight"]) == ("a", "llama3.2", 1, 1)
    assert queue["oldest_wait_s"] == 3.0
    (user,) = snapshot["users"]
    assert user["served_tokens"] == 150 and user["share"] == 1.0 and user["weight"] == 2.0
    assert snapshot["backends"] == [
        {"backend_id": 1, "in_flight": 1, "max_concurrent": 1, "accepts_work": True, "resident": ["llama3.2"]}
    ]


def test_usage_older_than_the_fairness_window_is_forgotten():
    scheduler = Scheduler(SchedulerConfig(fairness_window_s=60))
    scheduler.update_backends([NODE])
    scheduler.submit("r", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)
    scheduler.release("r", 100, now=1.0)

    served = {row["user_id"]: row["served_tokens"] for row in scheduler.snapshot(now=30.0)["users"]}
    assert served == {"a": 100}
    assert scheduler.snapshot(now=62.0)["users"] == []  # credit refilled, usage forgotten


def test_new_knobs_apply_to_requests_already_queued():
    scheduler = Scheduler(SchedulerConfig(max_wait_s=300))
    scheduler.update_backends([NODE])
    scheduler.submit("running", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.submit("waiting", "b", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)

    scheduler.reconfigure(SchedulerConfig(max_wait_s=10), now=5.0)
    assert scheduler.expired(now=11.0) == ["waiting"]


def test_lowering_the_burst_cap_trims_credit_already_earned():
    scheduler = Scheduler(SchedulerConfig(burst_cap=4000))
    scheduler.update_backends([BackendState(1, frozenset({"llama3.2"}), max_concurrent=4)])
    for user_id in ("a", "b"):  # each keeps 3000 of its 4000 credit while this request runs
        scheduler.submit(f"{user_id}-running", user_id, 1.0, "llama3.2", 1000, now=0.0)
    scheduler.dispatch(0.0)

    scheduler.reconfigure(SchedulerConfig(burst_cap=1000), now=1.0)
    scheduler.submit("at-new-cap", "a", 1.0, "llama3.2", 1000, now=1.0)
    scheduler.submit("over-new-cap", "b", 1.0, "llama3.2", 1001, now=1.0)
    bursts = {grant.request_id: grant.burst for grant in scheduler.dispatch(1.0)}
    assert bursts == {"at-new-cap": True, "over-new-cap": False}


def test_transfer_moves_a_granted_request_to_another_backend_or_keeps_its_slot():
    from scheduler import BackendState, Scheduler

    scheduler = Scheduler()
    scheduler.update_backends([BackendState(1, frozenset({"m"}), 1), BackendState(2, frozenset({"m"}), 1)])
    scheduler.submit("a", "u", 1.0, "m", 10, now=0)
    (grant,) = scheduler.dispatch(0)
    moved = scheduler.transfer("a", frozenset(), now=1)
    assert moved.request_id == "a" and moved.backend_id != grant.backend_id
    assert scheduler.transfer("a", frozenset({grant.backend_id}), now=2) is None  # nowhere else: keeps its slot
    scheduler.submit("b", "u", 1.0, "m", 10, now=3)
    (second,) = scheduler.dispatch(3)
    assert second.backend_id == grant.backend_id  # the first backend's slot was freed by the move
    assert scheduler.transfer("a", frozenset(), now=4) is None  # both busy
    assert scheduler.release("a", 10, now=5) and not scheduler.release("a", 10, now=6)
