"""The gateways' live queues, as the snapshots they write to the database show them."""

from __future__ import annotations

import datetime as dt
import json

from store.models import QueueSnapshot, User, utcnow

# A gateway writes its snapshot every second; an older one belongs to a gateway that stopped.
QUEUE_SNAPSHOT_MAX_AGE = dt.timedelta(seconds=30)


def live_queue(max_age: dt.timedelta) -> list[dict]:
    """Per gateway: totals, the queue per user and model (with usernames and burst credit), backends' slots."""
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
            "backends": data.get("backends", []),
        })
    return sorted(gateways, key=lambda gateway: gateway["gateway"])
