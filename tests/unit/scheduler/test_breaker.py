"""The circuit breaker's timeline, in virtual time."""

from scheduler.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def test_consecutive_failures_open_the_breaker_and_a_success_in_between_resets_the_count():
    breaker = Breaker(failure_threshold=3, cooldown_s=10)
    assert not breaker.failed(0) and not breaker.failed(1)
    breaker.succeeded()
    assert not breaker.failed(2) and not breaker.failed(3)
    assert breaker.failed(4) and breaker.state == OPEN
    assert not breaker.allows(5)


def test_after_the_cooldown_exactly_one_probe_goes_through():
    breaker = Breaker(failure_threshold=1, cooldown_s=10)
    breaker.failed(0)
    assert not breaker.allows(9.9)
    assert breaker.allows(10) and breaker.state == HALF_OPEN
    breaker.dispatched()
    assert not breaker.allows(10.1)


def test_a_successful_probe_closes_it_and_a_failed_one_reopens_it_for_another_cooldown():
    breaker = Breaker(failure_threshold=1, cooldown_s=10)
    breaker.failed(0)
    breaker.allows(10)
    breaker.dispatched()
    assert breaker.failed(11) and breaker.state == OPEN
    assert not breaker.allows(20) and breaker.allows(21)
    breaker.dispatched()
    breaker.succeeded()
    assert breaker.state == CLOSED and breaker.allows(21) and breaker.failures == 0
