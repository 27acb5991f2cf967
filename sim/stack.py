"""A whole MindRouter on one machine, started with the operator commands.

Two simulated nodes (Ollama and vLLM), the admin app and the gateway, each its own process, with
the backends registered through the admin API. `make run` runs it on the README's ports
(`python -m sim.stack`); the tests start it on free ports against a database of their own.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python")
FLASK = [str(VENV_BIN / "flask"), "--app", "admin_app"]
MITMDUMP = str(VENV_BIN / "mitmdump")
GATEWAY = [PYTHON, "-m", "addons"]  # the lean launcher; `mitmdump -s addons/mindrouter.py` is the same gateway

OLLAMA_MODELS = ["llama3.2", "qwen2.5vl", "nomic-embed-text"]
VLLM_MODELS = ["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2-VL-2B-Instruct", "intfloat/e5-small"]
TOKENS_PER_S = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_command(args: list[str], env: dict[str, str]) -> str:
    """Run an operator command to completion; its stdout, or an error with everything it said."""
    done = subprocess.run(args, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Service:
    """One child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.output()[-4000:]}")

    def wait_http(self, url: str, timeout: float = 30, accept: Callable[[httpx.Response], bool] | None = None) -> None:
        def answers() -> bool:
            self.check_alive()
            response = httpx.get(url, timeout=2)
            return accept(response) if accept else response.status_code < 500

        wait_until(answers, timeout, f"{self.name} at {url}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        return self.process.returncode


@dataclass
class Stack:
    gateway_url: str
    admin_url: str
    ollama_url: str
    vllm_url: str
    env: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)  # username → API key
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


def start_stack(
    log_dir: Path, env: dict[str, str], ports: dict[str, int], gateway_options: tuple[str, ...] = (),
    key_users: tuple[str, ...] = ("admin",), sim_args: tuple[str, ...] = (), max_concurrent: int = 4,
) -> Stack:
    """Migrate, seed, start the four processes, register both nodes; keys for `key_users` (admin first).

    `sim_args` go to both simulated nodes after the defaults (e.g. `--tokens-per-s 20` for slow ones);
    both are registered with `max_concurrent`.
    """
    env = {"ADMIN_APP_URL": f"http://127.0.0.1:{ports['admin']}", **env}
    run_command([*FLASK, "db", "upgrade"], env)
    run_command([*FLASK, "seed"], env)
    stack = Stack(
        gateway_url=f"http://127.0.0.1:{ports['gateway']}",
        admin_url=env["ADMIN_APP_URL"],
        ollama_url=f"http://127.0.0.1:{ports['ollama']}",
        vllm_url=f"http://127.0.0.1:{ports['vllm']}",
        env=env,
    )
    pacing = ["--tokens-per-s", str(TOKENS_PER_S), *sim_args]
    try:
        stack.services += [
            Service("ollama", [PYTHON, "-m", "sim", "ollama", "--port", str(ports["ollama"]),
                               "--models", ",".join(OLLAMA_MODELS), "--vision-models", "qwen2.5vl",
                               "--embedding-models", "nomic-embed-text", "--max-loaded", "3", *pacing], env, log_dir),
            Service("vllm", [PYTHON, "-m", "sim", "vllm", "--port", str(ports["vllm"]), "--models", ",".join(VLLM_MODELS),
                             "--embedding-models", "intfloat/e5-small", "--vision-models", "Qwen/Qwen2-VL-2B-Instruct", *pacing],
                    env, log_dir),
            Service("admin", [*FLASK, "run", "--port", str(ports["admin"])], env, log_dir),
            Service("gateway", [*GATEWAY, "-p", str(ports["gateway"]),
                                *(arg for option in gateway_options for arg in ("--set", option))], env, log_dir),
        ]
        stack.service("ollama").wait_http(f"{stack.ollama_url}/api/version")
        stack.service("vllm").wait_http(f"{stack.vllm_url}/health")
        stack.service("admin").wait_http(f"{stack.admin_url}/")
        stack.service("gateway").wait_http(f"{stack.gateway_url}/healthz", accept=lambda r: r.status_code == 200)
        stack.keys = {name: stack.new_key(name, "sim.stack") for name in key_users}
        admin = {"Authorization": f"Bearer {stack.keys['admin']}"}
        for name, engine, url in (("sim-ollama", "ollama", stack.ollama_url), ("sim-vllm", "vllm", stack.vllm_url)):
            registered = httpx.post(f"{stack.gateway_url}/admin/backends/register", headers=admin, timeout=10, json={
                "name": name, "url": url, "engine": engine, "max_concurrent": max_concurrent, "gpu_memory_gb": 24})
            if registered.status_code != 409:  # a re-run finds its nodes registered already
                registered.raise_for_status()
        wait_until(lambda: all_models_listed(stack), 30, "both nodes' models in /v1/models")
    except BaseException:
        stack.stop()
        raise
    return stack


def all_models_listed(stack: Stack) -> bool:
    response = httpx.get(f"{stack.gateway_url}/v1/models", timeout=5,
                         headers={"Authorization": f"Bearer {stack.keys['admin']}"})
    listed = {model["id"] for model in response.json()["data"]}
    return all(any(name in listed for name in (m, f"{m}:latest")) for m in OLLAMA_MODELS + VLLM_MODELS)


def main() -> None:
    from store.environment import load_dotenv

    load_dotenv(REPO_ROOT / ".env")
    ports = {"gateway": 8000, "admin": 8001, "ollama": 11435, "vllm": 8100}
    env = {"SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_hex(32)}
    print("starting the simulated nodes, the admin app and the gateway ...", flush=True)
    stack = start_stack(REPO_ROOT / "data" / "logs", env, ports, key_users=("admin", "student1"))
    print(f"""
MindRouter is up: gateway {stack.gateway_url}, admin app {stack.admin_url} (logs in data/logs/).
Models: {", ".join(OLLAMA_MODELS)} (Ollama node), {", ".join(VLLM_MODELS)} (vLLM node).

  export MINDROUTER_KEY={stack.keys["student1"]}   # student1
  export ADMIN_KEY={stack.keys["admin"]}   # admin

  curl -s {stack.gateway_url}/v1/chat/completions -H "Authorization: Bearer $MINDROUTER_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{VLLM_MODELS[0]}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

Ctrl-C stops everything.""", flush=True)
    serve_until_stopped(stack)


def serve_until_stopped(stack: Stack) -> None:
    """Keep the stack up until Ctrl-C or SIGTERM (a service that dies ends it too), then stop it."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping:
            for service in stack.services:
                service.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", flush=True)
        stack.stop()


if __name__ == "__main__":
    main()
