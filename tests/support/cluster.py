"""The test cluster: `sim.stack` on free ports with a database of its own."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sim.stack import Stack, free_port, start_stack
from store import api_keys, database
from store.db import open_database
from store.models import ApiKey, User

USERS = ("admin", "faculty1", "staff1", "student1")
# Suites that are not about limits run without them: no rate or concurrency limit, a budget nobody reaches.
NO_LIMITS = ("rate_limit_rpm=admin=0,faculty=0,staff=0,student=0",
             "max_concurrent_per_user=admin=0,faculty=0,staff=0,student=0",
             "max_queued_per_user=admin=0,faculty=0,staff=0,student=0")


def options_with(base: tuple[str, ...], *overrides: str) -> tuple[str, ...]:
    """`base` with each NAME=VALUE of `overrides` replacing base's NAME: mitmproxy never starts the
    script's addons when one of their options is set twice on the command line."""
    names = {override.split("=", 1)[0] for override in overrides}
    return (*(option for option in base if option.split("=", 1)[0] not in names), *overrides)


def start_cluster(work_dir: Path, database_url: str, gateway_options: tuple[str, ...] = (),
                  environment: dict[str, str] | None = None, **stack_options) -> Stack:
    env = {
        "DEFAULT_TOKEN_BUDGET": str(10**12),
        "TELEMETRY_SECRET": secrets.token_hex(16),
        **(environment or {}),
        "DATABASE_URL": database_url,
        "SECRET_KEY": secrets.token_hex(16),
        "ARTIFACT_STORAGE_PATH": str(work_dir / "artifacts"),
    }
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    return start_stack(work_dir, env, ports, gateway_options, key_users=USERS, **stack_options)


def slot_gauges(stack: Stack) -> dict[str, float]:
    """In-flight and queued totals from the gateway's own /metrics."""
    text = httpx.get(f"{stack.gateway_url}/metrics").text
    totals = {"mindrouter_in_flight_requests": 0.0, "mindrouter_queued_requests": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def start_one_slot_cluster(work_dir: Path) -> Stack:
    """Both nodes registered with one slot each and fast pacing; a small quantum and no burst credit, so
    that a few requests show the shares by weight. `stack.db` is the test's own connection."""
    stack = start_cluster(work_dir, f"sqlite:///{work_dir / 'db.sqlite'}", ("scheduler_quantum=100", "scheduler_burst_cap=0"),
                          sim_args=("--tokens-per-s", "1000"), max_concurrent=1)
    stack.db = open_database(stack.env["DATABASE_URL"])
    return stack


def new_student(stack: Stack, label: str, **overrides) -> tuple[int, str]:
    """A student of its own with these User overrides, and a key (straight into the database): its id and key."""
    database.initialize(stack.db)
    user = User.create(username=f"{label}-{secrets.token_hex(4)}", role="student", **overrides)
    key, prefix = api_keys.generate_key()
    ApiKey.create(user=user.id, prefix=prefix, key_hash=api_keys.hash_key(key), label=f"{label} test")
    return user.id, key
