"""Issue 13 through real processes: three gateways behind HAProxy share one node's slots and one fair queue
through Redis, over MariaDB; one of them killed or stopped under load.

One simulated vLLM node registered with 2 slots (it would run more: its own counter says what it got).
Users of weights 3 / 2 / 1 each keep requests open; shares are counted in served tokens, from the usage
the gateways return, over the requests that finished while every user was backlogged.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import urlparse

import httpx
import pytest
import redis

from sim.scaleout import start_gateway, start_scaled_stack
from sim.stack import free_port, wait_until
from store.db import open_database
from store.models import Request, RequestBody
from tests.conftest import MYSQL_SERVER_URL, _mysql_admin_connection
from tests.support.cluster import NO_LIMITS, USERS, slot_gauges
from tests.unit.policy.support import REDIS_URL, delete_prefix, redis_reachable

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the vLLM node's
SLOTS = 2
TOKENS_PER_S = 500
ANSWER_TOKENS = 100  # 0.2 s a request: about 10 requests a second through the node's two slots
WEIGHTS = {"faculty1": 3, "staff1": 2, "student1": 1}
LEASE_TTL_S = 3


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    assert redis_reachable(), f"no Redis server at {REDIS_URL} (`make services` starts one)"
    work_dir = tmp_path_factory.mktemp("scaleout")
    database = f"mindrouter_scaleout_{secrets.token_hex(4)}"
    admin = _mysql_admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    prefix = f"mindrouter-test-{secrets.token_hex(6)}"
    env = {"DATABASE_URL": f"mysql://{urlparse(MYSQL_SERVER_URL).netloc}/{database}", "REDIS_URL": REDIS_URL,
           "SECRET_KEY": secrets.token_hex(16), "DEFAULT_TOKEN_BUDGET": str(10**12),
           "TELEMETRY_SECRET": secrets.token_hex(16), "ARTIFACT_STORAGE_PATH": str(work_dir / "artifacts")}
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    options = (*NO_LIMITS, f"redis_key_prefix={prefix}", "redis_timeout_ms=3000", f"policy_lease_ttl_s={LEASE_TTL_S}",
               "shutdown_grace_s=30")
    stack = start_scaled_stack(work_dir, env, ports, 3, options, key_users=USERS, max_concurrent=SLOTS,
                               sim_args=("--tokens-per-s", str(TOKENS_PER_S)))
    stack.redis_prefix, stack.options, stack.work_dir = prefix, options, work_dir
    yield stack
    stack.stop()
    delete_prefix(prefix)
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
    admin.close()


@pytest.fixture
def cluster(scaled):
    """The scaled stack with every gateway running and nothing held; a gateway a test stopped is restarted."""
    httpx.post(f"{scaled.vllm_url}/_sim/reset").raise_for_status()
    yield scaled
    for n, gateway in enumerate(scaled.gateways):
        if gateway.process.poll() is not None:
            port = urlparse(scaled.gateway_urls[n]).port
            scaled.gateways[n] = start_gateway(scaled, f"gateway-{n + 1}-again", port, scaled.options, scaled.work_dir)
            wait_until(lambda u=scaled.gateway_urls[n]: httpx.get(f"{u}/readyz").status_code == 200, 30, "readyz")
    wait_until(lambda: haproxy_servers_up(scaled) == 3, 10, "HAProxy to see all three gateways up")


def haproxy_servers_up(stack) -> int:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(stack.work_dir / "haproxy.sock"))
        sock.sendall(b"show servers state gateways\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    rows = [line.split() for line in answer.decode().splitlines()[2:] if line.strip()]
    # srv_name, srv_op_state (2: running); the unchecked backups are always running
    return sum(1 for row in rows if len(row) > 5 and not row[3].endswith("-anyway") and row[5] == "2")


# ---- clients ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    user: str
    prompt: str
    started: float
    ended: float
    status: int | None  # None: the connection failed (reset, cut)
    tokens: int = 0
    retry_after: str | None = None
    error: str = ""


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def body(prompt: str) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": ANSWER_TOKENS,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def one_request(client: httpx.AsyncClient, url: str, key: str, user: str, load: Load) -> Outcome:
    prompt = f"{user} {secrets.token_hex(6)}"
    outcome = Outcome(user, prompt, time.monotonic(), 0.0, None)
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body(prompt),
                                 headers={"Authorization": f"Bearer {key}"}) as response:
            text = (await response.aread()).decode()
        outcome.status, outcome.retry_after = response.status_code, response.headers.get("Retry-After")
        if response.status_code == 200:
            chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
            usage = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
            outcome.tokens = usage[-1]["completion_tokens"] if usage else 0
            if not text.rstrip().endswith("data: [DONE]"):
                outcome.error = "stream cut short"
        else:
            outcome.error = text[:300]
    except httpx.HTTPError as exc:
        outcome.error = repr(exc)
    outcome.ended = time.monotonic()
    load.outcomes.append(outcome)
    return outcome


async def keep_open(client: httpx.AsyncClient, url: str, key: str, user: str, load: Load) -> None:
    """One stream of requests, one after another, until told to stop; after a 503 it waits its Retry-After."""
    while not load.stop.is_set():
        outcome = await one_request(client, url, key, user, load)
        if outcome.status == 503 and outcome.retry_after:
            await asyncio.sleep(int(outcome.retry_after))


def shares_of(outcomes: list[Outcome], since: float, until: float) -> dict[str, float]:
    tokens = {user: 0 for user in WEIGHTS}
    for outcome in outcomes:
        if outcome.status == 200 and since <= outcome.ended <= until:
            tokens[outcome.user] += outcome.tokens
    total = sum(tokens.values())
    return {user: count / total for user, count in tokens.items()}


def jain(shares: dict[str, float]) -> float:
    normalised = [shares[user] / WEIGHTS[user] for user in WEIGHTS]
    return sum(normalised) ** 2 / (len(normalised) * sum(x * x for x in normalised))


# ---- what must hold after each scenario --------------------------------------------------------------

def node_stats(stack) -> dict:
    return httpx.get(f"{stack.vllm_url}/_sim/stats", timeout=5).json()


def slot_leases(stack) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(client.zcard(key) for key in client.scan_iter(f"{stack.redis_prefix}:backend:*:leases"))
    finally:
        client.close()


def lease_expiries(stack) -> tuple[int, dict[str, int]]:
    """Redis's clock (ms) and every backend slot lease it holds, expired ones too ("request|gateway" → expiry ms):
    a script drops the expired ones of a backend when it next looks at it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        seconds, micros = client.time()
        return seconds * 1000 + micros // 1000, {
            member.decode(): int(expiry) for key in client.scan_iter(f"{stack.redis_prefix}:backend:*:leases")
            for member, expiry in client.zrange(key, 0, -1, withscores=True)}
    finally:
        client.close()


def assert_nothing_held(stack, within_s: float) -> None:
    wait_until(lambda: slot_leases(stack) == 0, within_s, "every backend slot lease in Redis to return")
    wait_until(lambda: node_stats(stack)["running"] == 0, within_s, "the node to run nothing")
    for gateway, url in zip(stack.gateways, stack.gateway_urls):
        if gateway.process.poll() is None:
            gauges = slot_gauges(SimpleNamespace(gateway_url=url))
            assert gauges == {"mindrouter_in_flight_requests": 0.0, "mindrouter_queued_requests": 0.0}, url


# ---- the scenarios -----------------------------------------------------------------------------------

def test_three_gateways_share_one_nodes_two_slots_by_weight(cluster):
    """Each user on a gateway of its own, the case where per-gateway fairness would split 1/3 each."""
    load = Load()
    window: dict[str, float] = {}

    async def scenario():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
            streams = [asyncio.create_task(keep_open(client, url, cluster.keys[user], user, load))
                       for user, url in zip(WEIGHTS, cluster.gateway_urls) for _ in range(6)]
            await asyncio.sleep(4)  # everyone backlogged; the first turns are behind us
            window["since"] = time.monotonic()
            await asyncio.sleep(24)
            window["until"] = time.monotonic()
            load.stop.set()
            await asyncio.gather(*streams)

    asyncio.run(scenario())

    assert [o for o in load.outcomes if o.status != 200 or o.error] == []
    shares = shares_of(load.outcomes, window["since"], window["until"])
    assert shares == pytest.approx({user: weight / 6 for user, weight in WEIGHTS.items()}, abs=0.03), shares
    assert jain(shares) >= 0.99, shares
    assert node_stats(cluster)["peak_in_flight"] <= SLOTS
    assert_nothing_held(cluster, 5)


def test_a_gateway_killed_under_load_costs_only_its_own_requests_and_its_slots_come_back(cluster):
    load = Load()
    killed_at: dict[str, float] = {}
    dead = f":{urlparse(cluster.gateway_urls[2]).port}:"  # in its gateway id, host:port:pid
    # The dead gateway's slot leases: those it held, and those the others granted its waiting requests until
    # its heartbeat expired. Each as first seen → its expiry (ms, Redis's clock); and any seen renewed.
    expiries: dict[str, int] = {}
    renewed: list[str] = []

    async def scenario():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
            streams = [asyncio.create_task(keep_open(client, cluster.gateway_url, cluster.keys[user], user, load))
                       for user in WEIGHTS for _ in range(4)]
            await asyncio.sleep(4)
            killed_at["t"] = time.monotonic()
            await asyncio.to_thread(cluster.gateways[2].stop, signal.SIGKILL)
            killed_at["dead"] = time.monotonic()  # reaped: a request sent before may have reached it
            died_ms = killed_at["died_ms"] = (await asyncio.to_thread(lease_expiries, cluster))[0]
            while time.monotonic() < killed_at["t"] + 3 * LEASE_TTL_S:
                now_ms, leases = await asyncio.to_thread(lease_expiries, cluster)
                live = {lease: expiry for lease, expiry in leases.items()
                        if expiry > now_ms and dead in lease.rsplit("|", 1)[1]}
                renewed.extend(lease for lease, expiry in live.items() if expiries.setdefault(lease, expiry) != expiry)
                if not live and now_ms > died_ms + 2 * LEASE_TTL_S * 1000:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(max(0.0, killed_at["t"] + 6 - time.monotonic()))
            load.stop.set()
            await asyncio.gather(*streams)

    asyncio.run(scenario())
    # Nobody renews a dead gateway's leases, so its slots come back at their expiry: within the lease TTL of
    # its death, or of the last grant the others made its waiting requests before its heartbeat expired.
    assert expiries and not renewed, (expiries, renewed)
    assert max(expiries.values()) <= killed_at["died_ms"] + 2 * LEASE_TTL_S * 1000, expiries

    killed = killed_at["dead"]
    failed = [o for o in load.outcomes if o.status != 200 or o.error]
    # Only requests that were open when the gateway died may fail: those it was serving.
    assert all(o.started < killed for o in failed), [(o.status, o.error) for o in failed if o.started >= killed]
    assert len(failed) <= 3 * 4, failed
    after = [o for o in load.outcomes if o.started > killed + 1]
    # The others keep serving everyone (how many depends on the machine's load, not on the gateways).
    assert {o.user for o in after} == set(WEIGHTS) and all(o.status == 200 and not o.error for o in after)
    assert node_stats(cluster)["peak_in_flight"] <= SLOTS
    assert_nothing_held(cluster, LEASE_TTL_S + 2)  # the dead gateway's leases expire with its heartbeat


def test_a_gateway_stopped_under_load_answers_and_audits_every_request_it_took(cluster):
    load = Load()

    async def scenario():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
            streams = [asyncio.create_task(keep_open(client, cluster.gateway_url, cluster.keys[user], user, load))
                       for user in WEIGHTS for _ in range(4)]
            await asyncio.sleep(4)
            await asyncio.to_thread(cluster.gateways[1].stop, signal.SIGTERM, 45)
            await asyncio.sleep(2)
            load.stop.set()
            await asyncio.gather(*streams)

    asyncio.run(scenario())

    assert cluster.gateways[1].process.returncode == 0
    assert [(o.status, o.error) for o in load.outcomes if o.status is None or o.error and o.status == 200] == []
    refused = [o for o in load.outcomes if o.status != 200]
    for outcome in refused:  # queued on the stopping gateway: refused in OpenAI's dialect with a Retry-After
        assert outcome.status == 503 and outcome.retry_after and "shutting down" in outcome.error, outcome
    answered = {o.prompt: o.status for o in load.outcomes}
    db = open_database(cluster.env["DATABASE_URL"])
    with db.bind_ctx([Request, RequestBody]):
        def audited() -> dict[str, int]:
            rows = RequestBody.select(RequestBody.prompt, Request.status).join(Request)
            return {prompt: row.request.status for row in rows for prompt in answered if prompt in row.prompt}

        wait_until(lambda: len(audited()) == len(answered), 15, "an audit row for every answered request")
        assert audited() == answered
    db.close()
    assert node_stats(cluster)["peak_in_flight"] <= SLOTS
    assert_nothing_held(cluster, 5)
