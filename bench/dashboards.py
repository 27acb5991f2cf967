"""Dashboard pages on a year of traffic: p50/p95 render time of every page, and of the audit search with a
user and a time range, against a database seeded by `bench/seed_audit.py` (1 000 000 audit rows).

    PYTHONPATH=. .venv/bin/python bench/seed_audit.py --rows 1000000
    PYTHONPATH=. .venv/bin/python bench/dashboards.py --json dashboards.json
    PYTHONPATH=. .venv/bin/python bench/seed_audit.py --drop

Each page is requested through Flask's test client (the whole view: queries, template, response; no
socket), `--warmup` times untimed and `--samples` times timed, as the admin `admin` or the heaviest
user `user0000` (the most rows to chart). Targets (DESIGN section 8): every page ≤ 300 ms p95, the
audit search with a user and a time range ≤ 500 ms p95.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import time

from admin_app import create_app
from admin_app.db import app_database
from store.models import QueueSnapshot, Request, User, utcnow

PAGE_TARGET_MS = 300
SEARCH_TARGET_MS = 500


def log_in(client, username: str, password: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    if response.status_code != 302:
        sys.exit(f"could not log in as {username}: {response.status_code}")


def timed(client, path: str, warmup: int, samples: int) -> dict:
    for _ in range(warmup):
        client.get(path).get_data()
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        response = client.get(path)
        response.get_data()
        times.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200:
            sys.exit(f"{path} answered {response.status_code}")
    times.sort()
    return {"path": path, "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1), "max_ms": round(times[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="mysql://root@127.0.0.1:3306/mindrouter_dashboards_bench")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    app = create_app({"DATABASE_URL": args.database_url, "SECRET_KEY": "bench", "SESSION_COOKIE_SECURE": False})
    now = utcnow()
    with app.app_context():
        audit_rows = Request.select().count()
        heavy = User.get(User.username == "user0000")
        # A live queue with 50 users waiting, as a gateway would write it.
        users = [{"user_id": heavy.id + i, "weight": 1.0, "running": 1, "waiting": 3, "cap": 4, "share": 0.02,
                  "entitled_share": 0.02, "served_tokens": 1000.0, "burst_credit": 0.0, "debt": 0.0}
                 for i in range(50)]
        queues = [{"user_id": heavy.id + i, "model": "llama3.2", "waiting": 3, "in_flight": 1, "deficit": 10.0,
                   "oldest_wait_s": 4.0} for i in range(50)]
        QueueSnapshot.delete().where(QueueSnapshot.gateway == "bench").execute()
        QueueSnapshot.create(gateway="bench", taken_at=now + dt.timedelta(hours=1), data=json.dumps(
            {"waiting": 150, "in_flight": 50, "users": users, "queues": queues, "backends": []}))
        some_request = Request.select(Request.request_id).where(Request.user == heavy.id) \
            .order_by(Request.created_at.desc()).first().request_id
        app_database(app).close()

    stamp = "%Y-%m-%dT%H:%M:%S"
    month_ago, week_ago = (now - dt.timedelta(days=30)).strftime(stamp), (now - dt.timedelta(days=7)).strftime(stamp)
    results = {"audit_rows": audit_rows, "samples": args.samples, "pages": [], "searches": []}

    public = app.test_client()
    results["pages"].append(timed(public, "/", args.warmup, args.samples))
    user = app.test_client()
    log_in(user, "user0000", "bench-password")
    results["pages"].append(timed(user, "/dashboard", args.warmup, args.samples))
    admin = app.test_client()
    log_in(admin, "admin", "admin123")
    for path in ("/admin", "/admin/console/backends", "/admin/console/users", "/admin/console/keys",
                 "/admin/console/approvals", "/admin/console/queue", "/admin/console/audit",
                 f"/admin/console/audit/{some_request}", "/admin/console/actions"):
        results["pages"].append(timed(admin, path, args.warmup, args.samples))
    for path in (f"/admin/console/audit?user=user0000&since={month_ago}&until={now.strftime(stamp)}",
                 f"/admin/console/audit?user=user0150&since={week_ago}",
                 f"/admin/audit/search?user=user0000&since={month_ago}&until={now.strftime(stamp)}",
                 f"/admin/audit/search?user=user0150&since={week_ago}"):
        results["searches"].append(timed(admin, path, args.warmup, args.samples))
    with app.app_context():
        QueueSnapshot.delete().where(QueueSnapshot.gateway == "bench").execute()
        app_database(app).close()

    print(f"{audit_rows:,} audit rows; {args.samples} timed requests each (after {args.warmup} untimed)\n")
    print(f"{'page':<70} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for row in results["pages"] + results["searches"]:
        print(f"{row['path'][:70]:<70} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['max_ms']:>8}")
    pages_ok = all(row["p95_ms"] <= PAGE_TARGET_MS for row in results["pages"])
    search_ok = all(row["p95_ms"] <= SEARCH_TARGET_MS for row in results["searches"])
    results["targets_met"] = {"pages_p95_300ms": pages_ok, "search_p95_500ms": search_ok}
    print(f"\nevery page p95 ≤ {PAGE_TARGET_MS} ms: {'yes' if pages_ok else 'NO'}; "
          f"audit search with user and time range p95 ≤ {SEARCH_TARGET_MS} ms: {'yes' if search_ok else 'NO'}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
