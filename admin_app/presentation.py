"""Numbers for people and charts without a script: Jinja filters and the geometry of SVG bar charts.

Charts are drawn on the server as SVG (no chart library to fetch, nothing that needs a CDN: clusters
are often offline), each with a title and a table of the same figures for screen readers."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from flask import Flask


def human_count(value) -> str:
    """1234 → "1.2k", 3_400_000 → "3.4M"; None → "—"."""
    if value is None:
        return "—"
    value = float(value)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit * 0.9995:  # 999 950 is "1M", not "1000k"
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def human_ms(value) -> str:
    """Milliseconds as people read them: 12 ms, 3.4 s, 2.5 min; None → "—"."""
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    return f"{value / 60_000:.1f} min"


def human_time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC" if value else "—"


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float


WIDTH, HEIGHT = 600, 160


def bars(points, width: int = WIDTH, height: int = HEIGHT) -> list[Bar]:
    """One bar per point, scaled so the highest fills the chart's height (viewBox units)."""
    points = list(points)
    if not points:
        return []
    top = max(point.value for point in points) or 1
    step = width / len(points)
    return [Bar(round(i * step + step * 0.1, 2), round(height - point.value / top * height, 2),
                round(step * 0.8, 2), round(point.value / top * height, 2), point.label, point.value)
            for i, point in enumerate(points)]


def action_changes(before_json: str, after_json: str) -> list[tuple[str, object, object]]:
    """What an admin action changed: (field, before, after) for each field whose value differs."""
    try:
        before, after = json.loads(before_json or "{}"), json.loads(after_json or "{}")
    except ValueError:
        return []
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    return [(name, before.get(name), after.get(name)) for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)]


def combine_page(args: dict, page: int) -> dict:
    return {**args, "page": page}


def init_app(app: Flask) -> None:
    app.add_template_filter(combine_page, "combine_page")
    app.add_template_global(action_changes, "action_changes")
    app.add_template_filter(human_count, "count")
    app.add_template_filter(human_ms, "ms")
    app.add_template_filter(human_time, "when")
    app.add_template_global(bars, "chart_bars")
    app.add_template_global(WIDTH, "CHART_WIDTH")
    app.add_template_global(HEIGHT, "CHART_HEIGHT")
