"""Rate arithmetic and role limits (scheduler.limits) in virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.limits import (
    SlidingWindow,
    limit_for,
    parse_role_limits,
    retry_after_header,
    window_wait,
)

ROLES = ("admin", "faculty", "staff", "student")


def test_role_limits_parse_every_role():
    assert parse_role_limits("admin=600, faculty=180,staff=120,student=0", ROLES) == {
        "admin": 600, "faculty": 180, "staff": 120, "student": 0}


@pytest.mark.parametrize("text, complaint", [
    ("admin=600,faculty=180,staff=120", "no limit for student"),
    ("admin=600,faculty=180,staff=120,student=60,student=5", "given twice"),
    ("admin=600,faculty=180,staff=120,pupil=60", "'pupil=60' is not ROLE=N"),
    ("admin=600,faculty=180,staff=120,student=-1", "not a whole number"),
    ("admin=600,faculty=180,staff=120,student", "is not ROLE=N"),
])
def test_role_limits_say_what_is_wrong(text, complaint):
    with pytest.raises(ValueError, match=complaint) as raised:
        parse_role_limits(text, ROLES)
    assert "ROLE=N for each of admin, faculty, staff, student" in str(raised.value)


def test_an_override_wins_over_the_role_even_when_zero():
    limits = {"student": 60}
    assert limit_for("student", None, limits) == 60
    assert limit_for("student", 5, limits) == 5
    assert limit_for("student", 0, limits) == 0  # 0: no limit


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one():
    assert [retry_after_header(s) for s in (0, 0.001, 1.0, 1.2, 59.9)] == ["1", "1", "1", "2", "60"]


def test_window_admits_the_limit_then_says_when_the_oldest_leaves():
    window = SlidingWindow()
    assert [window.admit(t, 3, 60) for t in (0, 10, 20)] == [0, 0, 0]
    assert window.admit(30, 3, 60) == 30  # the request at 0 leaves at 60
    assert window.admit(59.999, 3, 60) == pytest.approx(0.001)
    assert window.admit(60, 3, 60) == 0  # exactly when it leaves
    assert window.admit(61, 3, 60) == 9  # now the request at 10 is the one to wait for


def test_refused_requests_do_not_count():
    window = SlidingWindow()
    window.admit(0, 1, 10)
    for t in range(1, 10):
        assert window.admit(t, 1, 10) > 0
    assert window.admit(10, 1, 10) == 0


def test_a_lowered_limit_waits_for_enough_requests_to_leave():
    times = [0.0, 1.0, 2.0, 3.0]
    assert window_wait(times, 2, 10, 5) == 7  # three must leave for one more to fit: the one at 2 goes at 12
    assert window_wait(times, 0, 10, 5) == 0  # no limit


@given(st.integers(1, 6), st.integers(1, 50),
       st.lists(st.integers(0, 5_000), min_size=1, max_size=80).map(sorted))
def test_window_is_exact(limit, window, arrivals):
    """Admitted iff fewer than `limit` admitted requests lie in (t - window, t]; a refusal's wait is exact."""
    sliding = SlidingWindow()
    admitted: list[int] = []
    for t in arrivals:
        in_window = [a for a in admitted if a > t - window]
        wait = sliding.admit(t, limit, window)
        if len(in_window) < limit:
            assert wait == 0
            admitted.append(t)
        else:
            assert wait > 0
            # waiting exactly `wait` lets one more in, and any less does not
            later = [a for a in in_window if a > t + wait - window]
            earlier = [a for a in in_window if a > t + wait - 0.5 - window]
            assert len(later) < limit <= len(earlier)
