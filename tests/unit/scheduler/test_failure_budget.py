"""Failure budgets: a sliding window of failed attempts per key, in bounded memory."""

from scheduler.failures import FailureBudget


def test_a_key_waits_once_its_failures_fill_the_window_and_not_after_it_passes():
    budget = FailureBudget(limit=3, window_s=60)
    for t in (0.0, 10.0, 20.0):
        assert budget.wait("k", t) == 0
        budget.charge("k", t)
    assert budget.wait("k", 30.0) == 30.0  # until the first failure leaves the window
    assert budget.wait("other", 30.0) == 0
    assert budget.wait("k", 60.0) == 0


def test_a_refunded_attempt_does_not_count():
    budget = FailureBudget(limit=1, window_s=60)
    budget.charge("k", 5.0)
    budget.refund("k", 5.0)
    assert budget.wait("k", 6.0) == 0 and len(budget) == 0


def test_the_table_forgets_the_key_charged_longest_ago_beyond_its_capacity():
    budget = FailureBudget(limit=1, window_s=60, capacity=100)
    for n in range(1000):
        budget.charge(f"address-{n}", float(n) / 1000)
    assert len(budget) == 100
    assert budget.wait("address-0", 1.0) == 0 and budget.wait("address-999", 1.0) > 0


def test_a_limit_of_zero_never_refuses_and_keeps_nothing():
    budget = FailureBudget(limit=0, window_s=60)
    for t in range(100):
        budget.charge("k", float(t))
    assert budget.wait("k", 100.0) == 0 and len(budget) == 0
