"""Work conservation: no free slot idles while a request it could serve waits, across models too."""

from __future__ import annotations

from scheduler import BackendState, Scheduler, SchedulerConfig


def test_request_never_waits_behind_another_models_request():
    scheduler = Scheduler()
    scheduler.update_backends(
        [
            BackendState(1, frozenset({"llama3.2"}), max_concurrent=1),
            BackendState(2, frozenset({"qwen2.5"}), max_concurrent=1),
        ]
    )
    scheduler.submit("llama-running", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.submit("llama-waiting", "a", 1.0, "llama3.2", 100, now=0.0)
    scheduler.dispatch(0.0)
    scheduler.submit("qwen", "a", 1.0, "qwen2.5", 100, now=1.0)  # same user, later, other model

    assert [grant.request_id for grant in scheduler.dispatch(1.0)] == ["qwen"]


def test_every_free_slot_is_filled_in_one_dispatch():
    scheduler = Scheduler(SchedulerConfig(burst_cap=0))
    scheduler.update_backends(
        [
            BackendState(1, frozenset({"llama3.2", "qwen2.5"}), max_concurrent=3),
            BackendState(2, frozenset({"qwen2.5"}), max_concurrent=2),
        ]
    )
    for n in range(10):
        scheduler.submit(f"l{n}", f"user{n % 3}", 1.0, "llama3.2", 100 * (n + 1), now=0.0)
        scheduler.submit(f"q{n}", f"user{n % 4}", 2.0, "qwen2.5", 50 * (n + 1), now=0.0)

    grants = scheduler.dispatch(0.0)
    assert len(grants) == 5
    assert scheduler.dispatch(0.0) == []


def test_lone_user_fills_a_big_cluster_at_once():
    scheduler = Scheduler(SchedulerConfig(burst_cap=0))
    scheduler.update_backends(
        [BackendState(n, frozenset({"llama3.2"}), max_concurrent=8) for n in range(1, 5)]
    )
    for n in range(40):
        scheduler.submit(f"r{n}", "alone", 1.0, "llama3.2", 4000, now=0.0)  # each far beyond one quantum

    assert len(scheduler.dispatch(0.0)) == 32


def test_freed_slot_goes_to_a_model_the_backend_serves():
    scheduler = Scheduler()
    scheduler.update_backends(
        [
            BackendState(1, frozenset({"llama3.2"}), max_concurrent=1),
            BackendState(2, frozenset({"qwen2.5"}), max_concurrent=1),
        ]
    )
    for model in ("llama3.2", "qwen2.5"):
        for n in range(3):
            scheduler.submit(f"{model}-{n}", f"user{n}", 1.0, model, 100, now=0.0)
    scheduler.dispatch(0.0)

    scheduler.release("qwen2.5-0", None, now=1.0)
    (grant,) = scheduler.dispatch(1.0)
    assert (grant.model, grant.backend_id) == ("qwen2.5", 2)
