"""What the dashboards show of usage, read from the rollups (UsageHour, UsageMinute), never by scanning
the audit table: a year of traffic is a million request rows, and its hourly rollup a few thousand per user.
The only audit reads are index ranges: one user's newest requests, or a search's page."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from peewee import fn

from store.models import Request, UsageHour, UsageMinute, User


@dataclass(frozen=True)
class Point:
    label: str
    value: float


def start_of_day(now: dt.datetime) -> dt.datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def start_of_month(now: dt.datetime) -> dt.datetime:
    return start_of_day(now).replace(day=1)


def tokens_per_second_by_minute(now: dt.datetime, minutes: int = 60) -> list[Point]:
    """The cluster's tokens per second, averaged over each of the last `minutes` minutes (gaps are 0)."""
    end = now.replace(second=0, microsecond=0)
    start = end - dt.timedelta(minutes=minutes - 1)
    rows = UsageMinute.select().where(UsageMinute.minute >= start)
    tokens = {row.minute: row.prompt_tokens + row.completion_tokens for row in rows}
    return [
        Point((start + dt.timedelta(minutes=i)).strftime("%H:%M"), tokens.get(start + dt.timedelta(minutes=i), 0) / 60)
        for i in range(minutes)
    ]


def per_minute(now: dt.datetime, minutes: int = 60) -> list[UsageMinute]:
    """Requests and tokens of each of the last `minutes` minutes (those with any), oldest first."""
    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes - 1)
    return list(UsageMinute.select().where(UsageMinute.minute >= start).order_by(UsageMinute.minute))


def users_active_since(since: dt.datetime) -> int:
    return (UsageHour.select(fn.COUNT(UsageHour.user_id.distinct()))
            .where((UsageHour.hour >= since) & (UsageHour.user_id != 0)).scalar() or 0)


def totals_since(since: dt.datetime) -> dict:
    row = (UsageHour.select(fn.SUM(UsageHour.requests).alias("requests"), fn.SUM(UsageHour.errors).alias("errors"),
                            fn.SUM(UsageHour.prompt_tokens + UsageHour.completion_tokens).alias("tokens"))
           .where(UsageHour.hour >= since).dicts().get())
    return {name: int(row[name] or 0) for name in ("requests", "errors", "tokens")}


def top_users(since: dt.datetime, limit: int = 10) -> list[dict]:
    tokens = fn.SUM(UsageHour.prompt_tokens + UsageHour.completion_tokens)
    rows = list(
        UsageHour.select(UsageHour.user_id, tokens.alias("tokens"), fn.SUM(UsageHour.requests).alias("requests"))
        .where((UsageHour.hour >= since) & (UsageHour.user_id != 0))
        .group_by(UsageHour.user_id).order_by(tokens.desc()).limit(limit).dicts()
    )
    names = {u.id: u.username for u in User.select(User.id, User.username)
             .where(User.id.in_([row["user_id"] for row in rows] or [0]))}
    return [{"username": names.get(row["user_id"], f"#{row['user_id']}"), "tokens": int(row["tokens"] or 0),
             "requests": int(row["requests"] or 0)} for row in rows]


def user_tokens_by_day(user_id: int, now: dt.datetime, days: int = 30) -> list[Point]:
    """One user's tokens per day over the last `days` days, oldest first (gaps are 0)."""
    first = start_of_day(now) - dt.timedelta(days=days - 1)
    per_day: dict[dt.date, int] = {}
    rows = (UsageHour.select(UsageHour.hour, UsageHour.prompt_tokens, UsageHour.completion_tokens)
            .where((UsageHour.user_id == user_id) & (UsageHour.hour >= first)))
    for row in rows:
        day = row.hour.date()
        per_day[day] = per_day.get(day, 0) + row.prompt_tokens + row.completion_tokens
    return [Point((first + dt.timedelta(days=i)).strftime("%m-%d"), per_day.get((first + dt.timedelta(days=i)).date(), 0))
            for i in range(days)]


def user_tokens_by_model(user_id: int, since: dt.datetime) -> list[Point]:
    tokens = fn.SUM(UsageHour.prompt_tokens + UsageHour.completion_tokens)
    rows = (UsageHour.select(UsageHour.model, tokens.alias("tokens"))
            .where((UsageHour.user_id == user_id) & (UsageHour.hour >= since))
            .group_by(UsageHour.model).order_by(tokens.desc()).dicts())
    return [Point(row["model"] or "(none)", int(row["tokens"] or 0)) for row in rows]


def recent_requests(user_id: int, limit: int = 20) -> list[Request]:
    """One user's newest requests: a range of the (user, created_at) index, not a scan."""
    return list(Request.select(Request.request_id, Request.created_at, Request.model, Request.status,
                               Request.prompt_tokens, Request.completion_tokens, Request.queue_ms, Request.total_ms)
                .where(Request.user == user_id).order_by(Request.created_at.desc()).limit(limit))
