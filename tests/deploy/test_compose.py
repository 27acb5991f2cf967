"""docker-compose.yml is valid and runs the same commands the README documents."""

from __future__ import annotations

import shutil
import subprocess

from ruamel.yaml import YAML  # mitmproxy's own YAML library

from sim.stack import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text().replace('"', "")  # shell quoting aside


def compose_command() -> list[str]:
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True) if shutil.which("docker") else None
    if plugin is not None and plugin.returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "neither `docker compose` nor docker-compose: run .ci/prepare"
    return ["docker-compose"]


def test_compose_file_is_valid():
    done = subprocess.run(
        [*compose_command(), "--profile", "sim", "config", "-q"], cwd=REPO_ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "SECRET_KEY": "validation-only"},
    )
    assert done.returncode == 0, done.stderr


def test_compose_services_run_the_readme_commands():
    services = YAML(typ="safe").load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    assert {"mariadb", "redis"} <= set(services)
    for name in ("gateway", "admin", "migrate", "sim-ollama", "sim-vllm"):
        command = " ".join(services[name]["command"])
        assert command in README, f"{name}: {command!r} is not the command the README documents"
