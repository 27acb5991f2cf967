"""A Redis server of a test's own, on a free port, so that stopping or restarting it disturbs no other test."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import redis

from sim.stack import Service, wait_until


def start_redis(port: int, work_dir: Path) -> Service:
    """A Redis on `port` that keeps nothing on disk; up (it answers PING) when this returns."""
    server = Service(f"redis-{secrets.token_hex(2)}", [shutil.which("redis-server") or "/usr/bin/redis-server",
                                                      "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                                      "--appendonly", "no"], {}, work_dir)
    wait_until(lambda: redis.Redis(port=port, socket_connect_timeout=0.5).ping(), 10, "the private Redis")
    return server
