"""A series looked up through `series` (addons/metrics.py) is the metric's own labelled child: what it counts is
what /metrics shows."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from addons.metrics import series


def test_a_cached_series_counts_into_the_metric_it_came_from():
    registry = CollectorRegistry()
    counter = Counter("series_test_total", "A counter of this test.", ["model", "status"], registry=registry)
    series(counter, "m", "200").inc()
    series(counter, "m", "200").inc(2)
    series(counter, "m", "500").inc()
    assert series(counter, "m", "200") is counter.labels("m", "200")
    exposed = generate_latest(registry).decode()
    assert 'series_test_total{model="m",status="200"} 3.0' in exposed
    assert 'series_test_total{model="m",status="500"} 1.0' in exposed
