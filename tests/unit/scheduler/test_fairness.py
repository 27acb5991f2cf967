"""Shares of served tokens under saturation (DESIGN section 5, section 8 fairness target)."""

from __future__ import annotations

import pytest

from scheduler import BackendState

ONE_NODE = [BackendState(1, frozenset({"llama3.2"}), max_concurrent=4, resident=frozenset({"llama3.2"}))]
WARMUP_S = 300.0  # burst credit every user starts with is spent by then
END_S = 3000.0


@pytest.mark.parametrize(
    "weights",
    [
        {"faculty": 3.0, "staff": 2.0, "student": 1.0},
        {"admin": 10.0, "student": 1.0},
        {"override": 1.5, "student": 1.0},
    ],
)
def test_shares_follow_weights_under_saturation(simulation, jain, weights):
    sim = simulation(ONE_NODE)
    for user, weight in weights.items():
        sim.keep_busy(user, "llama3.2", cost=500, weight=weight)
    sim.run(END_S)

    shares = sim.shares(since=WARMUP_S)
    total_weight = sum(weights.values())
    for user, weight in weights.items():
        assert shares[user] == pytest.approx(weight / total_weight, abs=0.02)
    assert jain([shares[user] / weight for user, weight in weights.items()]) >= 0.98


def test_equal_users_split_evenly_under_saturation(simulation):
    sim = simulation(ONE_NODE)
    sim.keep_busy("alice", "llama3.2", cost=700)
    sim.keep_busy("bob", "llama3.2", cost=700)
    sim.run(END_S)

    shares = sim.shares(since=WARMUP_S)
    assert 0.47 <= shares["alice"] <= 0.53
    assert 0.47 <= shares["bob"] <= 0.53


def test_shares_count_tokens_not_requests(simulation):
    sim = simulation(ONE_NODE)
    sim.keep_busy("chatty", "llama3.2", cost=100, outstanding=40)
    sim.keep_busy("essayist", "llama3.2", cost=3000)
    sim.run(END_S)

    shares = sim.shares(since=WARMUP_S)
    assert 0.45 <= shares["chatty"] <= 0.55


def test_lone_user_gets_every_slot(simulation):
    cluster = [
        BackendState(1, frozenset({"llama3.2"}), max_concurrent=4),
        BackendState(2, frozenset({"llama3.2", "qwen2.5"}), max_concurrent=2),
    ]
    sim = simulation(cluster, tokens_per_s=100.0)
    sim.keep_busy("alone", "llama3.2", cost=500, outstanding=20)
    sim.run(1000.0)

    # 6 slots, each finishing a 500-token request every 5 s, none ever idle
    assert sim.served_tokens()["alone"] >= 6 * 100.0 * (1000.0 - 5.0)


def test_underestimated_cost_is_charged_after_release(simulation):
    sim = simulation(ONE_NODE)
    sim.keep_busy("understates", "llama3.2", cost=100, actual=1000)
    sim.keep_busy("honest", "llama3.2", cost=1000, actual=1000)
    sim.run(END_S)

    shares = sim.shares(since=WARMUP_S)
    assert 0.45 <= shares["understates"] <= 0.55


def test_overestimated_cost_is_refunded_after_release(simulation):
    sim = simulation(ONE_NODE)
    sim.keep_busy("overstates", "llama3.2", cost=2000, actual=500)
    sim.keep_busy("honest", "llama3.2", cost=500, actual=500)
    sim.run(END_S)

    shares = sim.shares(since=WARMUP_S)
    assert 0.45 <= shares["overstates"] <= 0.55


def test_shared_backend_splits_by_weight_across_models(simulation):
    ollama = [BackendState(1, frozenset({"llama3.2", "qwen2.5"}), max_concurrent=4)]
    sim = simulation(ollama)
    sim.keep_busy("faculty", "llama3.2", cost=500, weight=3.0)
    sim.keep_busy("student", "qwen2.5", cost=500, weight=1.0)
    sim.run(END_S)

    shares = sim.shares(since=WARMUP_S)
    assert shares["faculty"] == pytest.approx(0.75, abs=0.02)


def test_model_idle_for_long_banks_no_advantage_on_a_shared_backend(simulation):
    ollama = [BackendState(1, frozenset({"llama3.2", "qwen2.5"}), max_concurrent=4)]
    sim = simulation(ollama)
    sim.keep_busy("early", "llama3.2", cost=500)
    sim.keep_busy("late", "qwen2.5", cost=500, start=2000.0)
    sim.run(4000.0)

    shares = sim.shares(since=2000.0 + WARMUP_S)
    assert 0.45 <= shares["late"] <= 0.55


def test_user_busy_on_one_model_is_not_starved_on_another(simulation):
    cluster = [
        BackendState(1, frozenset({"llama3.2"}), max_concurrent=2),
        BackendState(2, frozenset({"qwen2.5"}), max_concurrent=8),
    ]
    sim = simulation(cluster)
    sim.keep_busy("both", "qwen2.5", cost=500, outstanding=30)  # the only qwen2.5 user
    sim.keep_busy("both", "llama3.2", cost=500)
    sim.keep_busy("other", "llama3.2", cost=500)
    sim.run(END_S)

    llama_served = {"both": 0, "other": 0}
    for done in sim.finished:
        if done.model == "llama3.2" and done.finished_at >= WARMUP_S:
            llama_served[done.user_id] += done.tokens
    assert 0.45 <= llama_served["both"] / sum(llama_served.values()) <= 0.55
