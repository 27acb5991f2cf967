"""The live queue (`GET /admin/queue`) per user: running, waiting, cap, weight, served and entitled shares."""

from __future__ import annotations

import json


def test_the_live_queue_shows_each_users_running_waiting_cap_weight_and_shares(client, admin_headers, admin):
    from store.models import QueueSnapshot, User, utcnow

    student = User.create(username="sam", role="student")
    faculty = User.create(username="fay", role="faculty")
    snapshot = {"waiting": 30, "in_flight": 2, "queues": [], "backends": [],
                "users": [
                    {"user_id": student.id, "weight": 1.0, "running": 1, "waiting": 10, "cap": 4, "share": 0.3,
                     "entitled_share": 0.25, "served_tokens": 3000.0, "burst_credit": 0.0, "debt": 0.0},
                    {"user_id": faculty.id, "weight": 3.0, "running": 1, "waiting": 20, "cap": None, "share": 0.7,
                     "entitled_share": 0.75, "served_tokens": 7000.0, "burst_credit": 0.0, "debt": 0.0},
                ]}
    QueueSnapshot.create(gateway="gw-1:8000", taken_at=utcnow(), data=json.dumps(snapshot))

    (gateway,) = client.get("/admin/queue", headers=admin_headers).get_json()["gateways"]

    users = {row["username"]: row for row in gateway["users"]}
    assert [row["username"] for row in gateway["users"]] == ["fay", "sam"]  # busiest first
    assert users["sam"] | {"user_id": None} == {
        "user_id": None, "username": "sam", "running": 1, "waiting": 10, "cap": 4, "weight": 1.0, "share": 0.3,
        "entitled_share": 0.25, "served_tokens": 3000.0, "burst_credit": 0.0}
    assert users["fay"]["cap"] is None and users["fay"]["entitled_share"] == 0.75
