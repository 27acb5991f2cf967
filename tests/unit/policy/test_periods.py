"""Which monthly budget a moment falls in, and when it rolls over (scheduler.quota)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from scheduler.quota import next_period_start, period_of


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2999, 12, 31)))
def test_a_moment_falls_in_its_month_and_the_next_period_starts_the_month_after(moment):
    assert period_of(moment) == moment.strftime("%Y-%m")
    start = next_period_start(moment)
    assert start > moment and start.day == 1 and period_of(start) != period_of(moment)
    assert period_of(start - dt.timedelta(microseconds=1)) == period_of(moment)
