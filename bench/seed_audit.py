"""Seed a MariaDB database with a year of audit rows (default 1 000 000) and the rollups the writer would
have kept, for `bench/dashboards.py`.

    PYTHONPATH=. .venv/bin/python bench/seed_audit.py --server mysql://root@127.0.0.1:3306/ \
        --database mindrouter_dashboards_bench --rows 1000000

The database is created (dropped first if it exists) and migrated with the project's migrations. Rows
go in with multi-row INSERTs of `--batch` rows; the rollups are computed from them with one
INSERT … SELECT … GROUP BY each, the same sums `addons.record.add_usage` keeps per request. Users:
`admin` (password admin123) and `user0000` … (password bench-password), students, staff and faculty.
`--drop` only drops the database and exits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from urllib.parse import urlparse

import pymysql

import migrations
from store.api_keys import hash_password
from store.db import open_database

MODELS = ["llama3.2", "qwen2.5:7b", "Qwen/Qwen2.5-0.5B-Instruct", "nomic-embed-text", "Qwen/Qwen2-VL-2B-Instruct"]
ROLES = ["student"] * 6 + ["staff"] * 2 + ["faculty"] * 2
STATUSES = [200] * 95 + [429, 503, 502, 400, 200]
PROMPT = '{"model": "%s", "messages": [{"role": "user", "content": "question %d about topic %d"}]}'


def server_connection(server: str, database: str | None = None):
    url = urlparse(server)
    return pymysql.connect(host=url.hostname, port=url.port or 3306, user=url.username or "root",
                           password=url.password or "", database=database, autocommit=False, charset="utf8mb4")


def database_url(server: str, database: str) -> str:
    return f"mysql://{urlparse(server).netloc}/{database}"


def create(server: str, database: str) -> None:
    with server_connection(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        cursor.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    db = open_database(database_url(server, database))
    migrations.upgrade(db)
    db.close()


def seed(server: str, database: str, rows: int, users: int, batch: int, days: int) -> None:
    random.seed(14)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    start = now - dt.timedelta(days=days)
    span = int((now - start).total_seconds())
    connection = server_connection(server, database)
    cursor = connection.cursor()
    user_hash, admin_hash = hash_password("bench-password"), hash_password("admin123")
    cursor.execute("INSERT INTO user (username, role, active, password_hash, created_at) VALUES (%s, %s, 1, %s, %s)",
                   ("admin", "admin", admin_hash, start))
    cursor.executemany(
        "INSERT INTO user (username, role, active, password_hash, created_at) VALUES (%s, %s, 1, %s, %s)",
        [(f"user{i:04d}", ROLES[i % len(ROLES)], user_hash, start) for i in range(users)])
    cursor.execute("SELECT id FROM user WHERE username LIKE 'user%%' ORDER BY id")
    user_ids = [row[0] for row in cursor.fetchall()]
    cursor.executemany(
        "INSERT INTO backend (name, url, engine, max_concurrent, enabled, draining, health, priority, last_error,"
        " created_at, gpu_indices) VALUES (%s, %s, %s, 8, 1, 0, 'healthy', 0, '', %s, '')",
        [(f"gpu-node-{i}", f"http://10.0.0.{i}:11434", "ollama" if i % 2 else "vllm", start) for i in range(1, 5)])
    cursor.execute("SELECT id FROM backend ORDER BY id")
    backend_ids = [row[0] for row in cursor.fetchall()]
    connection.commit()

    # Heavier users first: a few use most of the cluster, as on a real campus.
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(user_ids))]
    began = time.monotonic()
    request_sql = ("INSERT INTO request (request_id, user_id, api_key_id, endpoint, client_dialect, backend_dialect,"
                   " model, backend_id, status, stream, queue_ms, ttft_ms, total_ms, prompt_tokens,"
                   " completion_tokens, client_address, error, created_at) VALUES ")
    body_sql = "INSERT INTO request_body (request_id, prompt, response, response_text, validation) VALUES "
    done = 0
    while done < rows:
        count = min(batch, rows - done)
        chosen = random.choices(user_ids, weights, k=count)
        values, bodies = [], []
        for i in range(count):
            n = done + i
            model = MODELS[n % len(MODELS)]
            status = STATUSES[n % len(STATUSES)]
            at = start + dt.timedelta(seconds=random.randrange(span))
            prompt_tokens, completion_tokens = random.randint(20, 2000), random.randint(0, 800)
            values.append(connection.escape((
                f"bench{n:012d}", chosen[i], None, "/v1/chat/completions", "openai", "ollama", model,
                backend_ids[n % len(backend_ids)], status, n % 2, random.random() * 2000, random.random() * 500,
                random.random() * 20000, prompt_tokens, completion_tokens if status == 200 else 0,
                "10.1.2.3", "" if status == 200 else "refused", at)))
            bodies.append((n, PROMPT % (model, n, n % 97)))
        cursor.execute(request_sql + ",".join(values))
        first_id = cursor.lastrowid  # InnoDB hands a multi-row INSERT consecutive ids (innodb_autoinc_lock_mode)
        cursor.execute(body_sql + ",".join(
            connection.escape((first_id + i, prompt, "", f"answer {n}", "")) for i, (n, prompt) in enumerate(bodies)))
        connection.commit()
        done += count
        if done % (batch * 20) == 0 or done == rows:
            print(f"{done:>9,} rows  {time.monotonic() - began:6.1f} s", flush=True)

    cursor.execute(
        "INSERT INTO usage_hour (user_id, model, hour, requests, errors, prompt_tokens, completion_tokens,"
        " queue_ms, total_ms) SELECT COALESCE(user_id, 0), COALESCE(model, ''),"
        " DATE_FORMAT(created_at, '%Y-%m-%d %H:00:00'), COUNT(*), SUM(status IS NULL OR status >= 400),"
        " SUM(COALESCE(prompt_tokens, 0)), SUM(COALESCE(completion_tokens, 0)), SUM(COALESCE(queue_ms, 0)),"
        " SUM(COALESCE(total_ms, 0)) FROM request GROUP BY 1, 2, 3")
    cursor.execute(
        "INSERT INTO usage_minute (minute, requests, errors, prompt_tokens, completion_tokens)"
        " SELECT DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:00'), COUNT(*), SUM(status IS NULL OR status >= 400),"
        " SUM(COALESCE(prompt_tokens, 0)), SUM(COALESCE(completion_tokens, 0)) FROM request GROUP BY 1")
    cursor.execute("INSERT INTO admin_action (actor_id, action, target, `before`, `after`, at) SELECT id, 'user.create',"
                   " CONCAT('user:', id), '{}', '{}', created_at FROM user")
    connection.commit()
    cursor.execute("ANALYZE TABLE request, request_body, usage_hour, usage_minute")
    cursor.fetchall()
    cursor.execute("SELECT (SELECT COUNT(*) FROM request), (SELECT COUNT(*) FROM usage_hour),"
                   " (SELECT COUNT(*) FROM usage_minute)")
    print("request, usage_hour, usage_minute rows: %s, %s, %s" % cursor.fetchone())
    print(f"seeded in {time.monotonic() - began:.0f} s")
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="mysql://root@127.0.0.1:3306/")
    parser.add_argument("--database", default="mindrouter_dashboards_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--drop", action="store_true", help="drop the database and exit")
    args = parser.parse_args()
    if args.drop:
        with server_connection(args.server) as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{args.database}`")
        print(f"dropped {args.database}")
        return
    create(args.server, args.database)
    seed(args.server, args.database, args.rows, args.users, args.batch, args.days)


if __name__ == "__main__":
    main()
