"""The gateways' live queues, as the snapshots they write to the database show them."""

from __future__ import annotations

import datetime as dt
import json

from store.models import QueueSnapshot, User, utcnow

# A gateway writes its snapshot every second; an older one belongs to a gateway that stopped.
QUEUE_SNAPSHOT_MAX_AGE = dt.timedelta(seconds=30)


# What the live queue shows of each user, from the gateway's snapshot (scheduler.Scheduler.snapshot).
USER_FIELDS = ("running", "waiting", "cap", "weight", "share", "entitled_share", "served_tokens", "burst_credit")


def live_queue(max_age: dt.timedelta) -> list[dict]:
    """Per gateway: totals; per user its running and waiting requests, its running cap (None: none), its
    weight, its share of the tokens served over the fairness window and the share its weight entitles it
    to among the users active now; the queue per user and model; backends' slots."""
    snapshots = list(QueueSnapshot.select().where(QueueSnapshot.taken_at >= utcnow() - max_age))
    decoded = [(snapshot, json.loads(snapshot.data)) for snapshot in snapshots]
    user_ids = {row["user_id"] for _, data in decoded for row in data.get("users", [])}
    names = {user.id: user.username for user in User.select(User.id, User.username).where(User.id.in_(list(user_ids) or [0]))}
    gateways = []
    for snapshot, data in decoded:
        users = {row["user_id"]: row for row in data.get("users", [])}
        gateways.append({
            "gateway": snapshot.gateway,
            "taken_at": snapshot.taken_at.isoformat(timespec="seconds") + "Z",
            "waiting": data.get("waiting", 0),
            "in_flight": data.get("in_flight", 0),
            "queues": [
                {
                    **row,
                    "username": names.get(row["user_id"]),
                    "weight": users.get(row["user_id"], {}).get("weight"),
                    "burst_credit": users.get(row["user_id"], {}).get("burst_credit"),
                }
                for row in data.get("queues", [])
            ],
            "users": sorted(
                ({"user_id": user_id, "username": names.get(user_id), **{name: row.get(name) for name in USER_FIELDS}}
                 for user_id, row in users.items()),
                key=lambda row: (-(row["running"] or 0) - (row["waiting"] or 0), str(row["username"]))),
            "backends": data.get("backends", []),
        })
    return sorted(gateways, key=lambda gateway: gateway["gateway"])
