"""The test cluster: `sim.stack` on free ports with a database of its own."""

from __future__ import annotations

import secrets
from pathlib import Path

from sim.stack import Stack, free_port, start_stack

USERS = ("admin", "faculty1", "staff1", "student1")


def start_cluster(work_dir: Path, database_url: str, gateway_options: tuple[str, ...] = ()) -> Stack:
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": secrets.token_hex(16),
        "ARTIFACT_STORAGE_PATH": str(work_dir / "artifacts"),
    }
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    return start_stack(work_dir, env, ports, gateway_options, key_users=USERS)
