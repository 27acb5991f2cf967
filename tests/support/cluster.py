"""A whole MindRouter cluster from the operator commands: simulated nodes, admin app, gateway."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.processes import VENV_BIN, Service, free_port, run_command, wait_until

PYTHON = str(VENV_BIN / "python")
FLASK = [str(VENV_BIN / "flask"), "--app", "admin_app"]

OLLAMA_MODELS = ["llama3.2", "qwen2.5vl", "nomic-embed-text"]
VLLM_MODELS = ["Qwen/Qwen2.5-0.5B-Instruct", "intfloat/e5-small"]
SIM_TOKENS_PER_S = 200


@dataclass
class Cluster:
    gateway_url: str
    admin_url: str
    ollama_url: str
    vllm_url: str
    env: dict[str, str]
    keys: dict[str, str]  # username → API key
    services: list[Service] = field(default_factory=list)

    def flask(self, *args: str) -> str:
        return run_command([*FLASK, *args], self.env)

    def new_key(self, username: str, label: str = "") -> str:
        """`flask keys create` prints the key alone on its last line."""
        return self.flask("keys", "create", username, "--label", label).strip().splitlines()[-1]

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def start_cluster(work_dir: Path, database_url: str, gateway_options: tuple[str, ...] = ()) -> Cluster:
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": secrets.token_hex(16),
        "ADMIN_APP_URL": f"http://127.0.0.1:{ports['admin']}",
        "ARTIFACT_STORAGE_PATH": str(work_dir / "artifacts"),
    }
    run_command([*FLASK, "db", "upgrade"], env)
    run_command([*FLASK, "seed"], env)
    cluster = Cluster(
        gateway_url=f"http://127.0.0.1:{ports['gateway']}",
        admin_url=env["ADMIN_APP_URL"],
        ollama_url=f"http://127.0.0.1:{ports['ollama']}",
        vllm_url=f"http://127.0.0.1:{ports['vllm']}",
        env=env,
        keys={},
    )
    try:
        cluster.services += [
            Service("ollama", [PYTHON, "-m", "sim", "ollama", "--port", str(ports["ollama"]),
                               "--models", ",".join(OLLAMA_MODELS), "--vision-models", "qwen2.5vl",
                               "--embedding-models", "nomic-embed-text", "--max-loaded", "3",
                               "--tokens-per-s", str(SIM_TOKENS_PER_S)], env, work_dir),
            Service("vllm", [PYTHON, "-m", "sim", "vllm", "--port", str(ports["vllm"]),
                             "--models", ",".join(VLLM_MODELS), "--embedding-models", "intfloat/e5-small",
                             "--tokens-per-s", str(SIM_TOKENS_PER_S)],
                    env, work_dir),
            Service("admin", [*FLASK, "run", "--port", str(ports["admin"])], env, work_dir),
            Service("gateway", [str(VENV_BIN / "mitmdump"), "-s", "addons/mindrouter.py", "-p", str(ports["gateway"]),
                                *(arg for option in gateway_options for arg in ("--set", option))], env, work_dir),
        ]
        cluster.service("ollama").wait_http(f"{cluster.ollama_url}/api/version")
        cluster.service("vllm").wait_http(f"{cluster.vllm_url}/health")
        cluster.service("admin").wait_http(f"{cluster.admin_url}/")
        cluster.service("gateway").wait_http(f"{cluster.gateway_url}/healthz", accept=lambda r: r.status_code == 200)
        cluster.keys = {name: cluster.new_key(name, "tests") for name in ("admin", "faculty1", "staff1", "student1")}
        admin = {"Authorization": f"Bearer {cluster.keys['admin']}"}
        for name, engine, url in (("ollama-1", "ollama", cluster.ollama_url), ("vllm-1", "vllm", cluster.vllm_url)):
            response = httpx.post(f"{cluster.gateway_url}/admin/backends/register", headers=admin, timeout=10, json={
                "name": name, "url": url, "engine": engine, "max_concurrent": 4, "gpu_memory_gb": 24})
            response.raise_for_status()
        wait_until(lambda: all_models_listed(cluster), 30, "both nodes' models in /v1/models")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def all_models_listed(cluster: Cluster) -> bool:
    response = httpx.get(f"{cluster.gateway_url}/v1/models", timeout=5,
                         headers={"Authorization": f"Bearer {cluster.keys['student1']}"})
    listed = {model["id"] for model in response.json()["data"]}
    return all(any(name in listed for name in (m, f"{m}:latest")) for m in OLLAMA_MODELS + VLLM_MODELS)
