"""Policy through real gateways: budgets under a burst, rate limits, the concurrency cap that queues, limits
shared by two gateways, kill -9.

Two stacks for the module: one counting in process, one counting in Redis with a second gateway on
the same database and Redis (and, for the kill test, a third started and killed). Every test makes
users and keys of its own, so the tests share the stacks without sharing limits.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time

import httpx
import pytest

from addons.limits import RedisCounters, connect
from addons.policy import request_cost
from scheduler.quota import period_of
from sim.stack import MITMDUMP, PYTHON, Service, Stack, free_port, start_stack, wait_until
from store import api_keys, database
from store.db import open_database
from store.models import ApiKey, Quota, User, utcnow
from tests.unit.policy.support import REDIS_URL, delete_prefix, requires_redis
from translators.pipeline import parse_client_request

LEASE_TTL_S = 3.0
MARGIN_S = 2.0  # polling, and a loaded test machine
RATE_WINDOW_S = 4.0
SLOW_MODEL = "slowllama"
OPENAI_MODEL, OLLAMA_MODEL = "Qwen/Qwen2.5-0.5B-Instruct", "llama3.2"
# Long words: the gateway's estimate of the prompt is above what the node counts (words + 4 per message).
PROMPT = "describe carefully everything regarding mountains rivers forests oceans"
MAX_TOKENS = 20


class Gateways:
    """A stack and the gateway URLs that share its database (and its Redis, when it has one)."""

    def __init__(self, stack: Stack, urls: list[str], options: tuple[str, ...], work_dir) -> None:
        self.stack, self.urls, self.options, self.work_dir = stack, urls, options, work_dir
        self.db = open_database(stack.env["DATABASE_URL"])

    def bind(self) -> None:
        """Point the models at this stack's database (the module's other stack has one of its own)."""
        database.initialize(self.db)

    def user(self, role: str = "student", **overrides) -> tuple[int, str]:
        """A new user with these User overrides and a key of its own: (user id, key)."""
        self.bind()
        user = User.create(username=f"policy-{secrets.token_hex(4)}", role=role, **overrides)
        return user.id, self.key_for(user.id)

    def key_for(self, user_id: int, rpm_override: int | None = None) -> str:
        """A new key of the user's (straight into the database: the CLI costs seconds a call)."""
        self.bind()
        key, prefix = api_keys.generate_key()
        ApiKey.create(user=user_id, prefix=prefix, key_hash=api_keys.hash_key(key), label="policy test",
                      rpm_override=rpm_override)
        return key

    def start_gateway(self, name: str) -> tuple[Service, str]:
        port = free_port()
        gateway = Service(name, [MITMDUMP, "-s", "addons/mindrouter.py", "-p", str(port),
                                 *(arg for option in self.options for arg in ("--set", option))],
                          self.stack.env, self.work_dir)
        self.stack.services.append(gateway)
        url = f"http://127.0.0.1:{port}"
        gateway.wait_http(f"{url}/healthz", accept=lambda r: r.status_code == 200)
        return gateway, url

    def quota_used(self, user_id: int) -> int:
        self.bind()
        return Quota.get((Quota.user == user_id) & (Quota.period == period_of(utcnow()))).used


def start_gateways(work_dir, redis_prefix: str | None) -> Gateways:
    env = {"DATABASE_URL": f"sqlite:///{work_dir / 'mindrouter.db'}", "SECRET_KEY": secrets.token_hex(16)}
    options = (f"rate_limit_window_s={RATE_WINDOW_S:g}", f"policy_lease_ttl_s={LEASE_TTL_S:g}", "quota_refresh_s=1")
    if redis_prefix:
        env["REDIS_URL"] = REDIS_URL
        # A loaded test machine can stall a Redis reply past the default 500 ms, and a fallback to
        # in-process counters would split the limits these tests check across gateways.
        options += (f"redis_key_prefix={redis_prefix}", "redis_timeout_ms=3000")
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    stack = start_stack(work_dir, env, ports, options, key_users=("admin",))
    gateways = Gateways(stack, [stack.gateway_url], options, work_dir)
    try:
        if redis_prefix:
            gateways.urls.append(gateways.start_gateway("gateway-b")[1])
        add_slow_node(gateways)
    except BaseException:
        stack.stop()
        raise
    return gateways


def add_slow_node(gateways: Gateways) -> None:
    """A node streaming 3 tokens a second, to hold requests open for seconds."""
    port = free_port()
    gateways.stack.services.append(Service("ollama-slow", [
        PYTHON, "-m", "sim", "ollama", "--port", str(port), "--models", SLOW_MODEL, "--slots", "16",
        "--tokens-per-s", "3"], {}, gateways.work_dir))
    gateways.stack.service("ollama-slow").wait_http(f"http://127.0.0.1:{port}/api/version")
    admin = {"Authorization": f"Bearer {gateways.stack.keys['admin']}"}
    httpx.post(f"{gateways.stack.gateway_url}/admin/backends/register", headers=admin, json={
        "name": "slow", "url": f"http://127.0.0.1:{port}", "engine": "ollama", "max_concurrent": 16},
        ).raise_for_status()
    for url in gateways.urls:
        wait_until(lambda u=url: f"{SLOW_MODEL}:latest" in httpx.get(f"{u}/api/tags", headers=admin).text,
                   20, f"{SLOW_MODEL} listed by {url}")


@pytest.fixture(scope="module")
def local_gateways(tmp_path_factory):
    gateways = start_gateways(tmp_path_factory.mktemp("policy-local"), None)
    yield gateways
    gateways.stack.stop()


@pytest.fixture(scope="module")
def redis_gateways(tmp_path_factory):
    if requires_redis.args[0]:
        pytest.skip(requires_redis.kwargs["reason"])
    prefix = f"mindrouter-test-{secrets.token_hex(6)}"
    gateways = start_gateways(tmp_path_factory.mktemp("policy-redis"), prefix)
    gateways.redis_prefix = prefix
    yield gateways
    gateways.stack.stop()
    delete_prefix(prefix)


@pytest.fixture(params=["in process", "redis"])
def gateways(request) -> Gateways:
    return request.getfixturevalue("local_gateways" if request.param == "in process" else "redis_gateways")


# ---- requests in both dialects ------------------------------------------------------------------

def chat_request(dialect: str, stream: bool, model: str | None = None, max_tokens: int = MAX_TOKENS) -> tuple[str, dict]:
    messages = [{"role": "user", "content": PROMPT}]
    if dialect == "openai":
        body = {"model": model or OPENAI_MODEL, "messages": messages, "max_tokens": max_tokens, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body
    return "/api/chat", {"model": model or OLLAMA_MODEL, "messages": messages, "stream": stream,
                         "options": {"num_predict": max_tokens}}


def expected_cost_of(path: str, body: dict) -> int:
    """What the gateway reserves for this request."""
    return request_cost(parse_client_request(path, json.dumps(body).encode()))


def usage_of(dialect: str, stream: bool, text: str) -> int:
    """Tokens the gateway reported to the client, whichever dialect and framing."""
    if not stream:
        body = json.loads(text)
        return (body["usage"]["total_tokens"] if dialect == "openai"
                else body["prompt_eval_count"] + body["eval_count"])
    if dialect == "openai":
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        return next(e["usage"]["total_tokens"] for e in events if e.get("usage"))
    last = json.loads(text.strip().splitlines()[-1])
    return last["prompt_eval_count"] + last["eval_count"]


async def call(client: httpx.AsyncClient, url: str, key: str, dialect: str, stream: bool, **kwargs) -> httpx.Response:
    path, body = chat_request(dialect, stream, **kwargs)
    response = await client.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"})
    await response.aread()
    return response


def assert_429_in_dialect(response: httpx.Response, dialect: str, code: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    if dialect == "openai":
        assert body["error"]["code"] == code and body["error"]["message"]
        assert body["error"]["type"] == ("insufficient_quota" if code == "insufficient_quota" else "rate_limit_error")
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


def node_tokens(stack: Stack) -> int:
    total = 0
    for url in (stack.ollama_url, stack.vllm_url):
        for counts in httpx.get(f"{url}/_sim/stats").json()["tokens"].values():
            total += counts["prompt"] + counts["completion"]
    return total


# ---- budgets ------------------------------------------------------------------------------------

def test_fifty_concurrent_requests_spend_at_most_the_budget_plus_one_request(gateways):
    """A user whose budget covers 10 requests fires 50 at once, in both dialects (and, with Redis,
    through both gateways): the engines run at most budget + one request's cost, the rest get 429."""
    shapes = [(dialect, stream) for dialect in ("openai", "ollama") for stream in (False, True)]
    costs = [expected_cost_of(*chat_request(d, s)) for d, s in shapes]
    budget = 10 * max(costs)
    user_id, key = gateways.user(token_budget_override=budget, max_concurrent_override=0, rpm_override=0)
    before = node_tokens(gateways.stack)

    async def burst() -> list[tuple[str, bool, httpx.Response]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            plan = [(gateways.urls[i % len(gateways.urls)], *shapes[i % len(shapes)]) for i in range(50)]
            answers = await asyncio.gather(*(call(client, url, key, d, s) for url, d, s in plan))
        return [(d, s, answer) for (_, d, s), answer in zip(plan, answers)]

    results = asyncio.run(burst())
    served = [(d, s, r) for d, s, r in results if r.status_code == 200]
    refused = [(d, r) for d, _, r in results if r.status_code != 200]
    assert len(served) >= 10 and len(served) + len(refused) == 50
    for dialect, response in refused:
        assert_429_in_dialect(response, dialect, "insufficient_quota")
        assert "token budget" in response.text
    reported = sum(usage_of(d, s, r.text) for d, s, r in served)
    wait_until(lambda: node_tokens(gateways.stack) - before >= reported, 5, "the nodes' counts")
    assert node_tokens(gateways.stack) - before == reported
    assert reported <= budget + max(costs)
    wait_until(lambda: gateways.quota_used(user_id) == reported, 10, "the usage written to the quota row")
    openai_refusal = next(r for d, r in refused if d == "openai")
    assert openai_refusal.headers["x-should-retry"] == "false"  # the OpenAI SDK must not retry this


def test_a_budget_top_up_in_the_database_lands_within_the_refresh(gateways):
    cost = expected_cost_of(*chat_request("ollama", False))
    user_id, key = gateways.user(token_budget_override=cost - 1)
    url = gateways.urls[-1]

    async def attempt() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await call(client, url, key, "ollama", False)

    assert_429_in_dialect(asyncio.run(attempt()), "ollama", "insufficient_quota")
    gateways.bind()  # what an admin approving a quota request does to the row
    Quota.update(budget=Quota.budget + 10 * cost).where(Quota.user == user_id).execute()
    topped_up_at = time.monotonic()
    wait_until(lambda: asyncio.run(attempt()).status_code == 200, 5, "the top-up to admit the request")
    assert time.monotonic() - topped_up_at <= 1 + MARGIN_S  # quota_refresh_s=1


# ---- rate limits --------------------------------------------------------------------------------

def test_requests_per_window_per_key_then_recovery(gateways):
    user_id, _ = gateways.user(max_concurrent_override=0)
    key = gateways.key_for(user_id, rpm_override=3)
    other_key = gateways.key_for(user_id)  # the limit is the key's: another key of the same user is not held back
    url = gateways.urls[-1]

    async def scenario():
        async with httpx.AsyncClient(timeout=30) as client:
            admitted = [await call(client, url, key, dialect, False) for dialect in ("openai", "ollama", "openai")]
            refused = [await call(client, url, key, dialect, False) for dialect in ("openai", "ollama")]
            refused_at = time.monotonic()  # Retry-After counts from the refusal, which came before this
            other = await call(client, url, other_key, "openai", False)
            wait = int(refused[-1].headers["Retry-After"])
            await asyncio.sleep(max(0.0, refused_at + wait - time.monotonic()))
            recovered = await call(client, url, key, "ollama", False)
            return admitted, refused, other, wait, recovered

    admitted, refused, other, wait, recovered = asyncio.run(scenario())
    assert [r.status_code for r in admitted] == [200, 200, 200]
    assert_429_in_dialect(refused[0], "openai", "rate_limit_exceeded")
    assert_429_in_dialect(refused[1], "ollama", "rate_limit_exceeded")
    assert "3 requests per 4 s" in refused[1].json()["error"]
    assert 1 <= wait <= RATE_WINDOW_S
    assert other.status_code == 200
    assert recovered.status_code == 200, recovered.text


# ---- two gateways, one Redis --------------------------------------------------------------------

async def open_slow_stream(client: httpx.AsyncClient, url: str, key: str):
    """A streaming request held open on the slow node; returns once its first line arrived."""
    path, body = chat_request("ollama", True, model=SLOW_MODEL, max_tokens=400)
    request = client.build_request("POST", f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"})
    response = await client.send(request, stream=True)
    assert response.status_code == 200, await response.aread()
    lines = response.aiter_lines()
    await lines.__anext__()
    return response, lines  # the line iterator too: collected, it would close the stream


def test_requests_over_the_concurrency_limit_wait_for_a_slot_of_their_users_instead_of_a_429(gateways):
    """A user capped at 2 running requests holds 2 streams open; a third waits in the fair queue (no
    429) and is answered once one of the two ends."""
    url = gateways.urls[0]
    _, key = gateways.user(max_concurrent_override=2, rpm_override=0)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            held = [await open_slow_stream(client, url, key) for _ in range(2)]
            path, body = chat_request("ollama", False, model=SLOW_MODEL, max_tokens=1)
            third = asyncio.create_task(client.post(f"{url}{path}", json=body,
                                                    headers={"Authorization": f"Bearer {key}"}))
            await asyncio.sleep(1.5)
            waited = not third.done()
            closed_at = time.monotonic()
            await held[0][0].aclose()  # the caller hangs up mid-stream: its slot comes back
            answer = await third
            for response, _ in held[1:]:
                await response.aclose()
            return waited, answer, time.monotonic() - closed_at

    waited, answer, after_close = asyncio.run(scenario())
    assert waited, "the third request was answered while the user already ran two"
    assert answer.status_code == 200, answer.text
    assert after_close < 1 + MARGIN_S


@requires_redis
def test_rate_limits_hold_across_two_gateways(redis_gateways):
    gateway_a, gateway_b = redis_gateways.urls[:2]
    user_id, _ = redis_gateways.user(rpm_override=0)
    rate_limited_key = redis_gateways.key_for(user_id, rpm_override=2)

    async def rate():
        async with httpx.AsyncClient(timeout=30) as client:
            return [await call(client, url, rate_limited_key, "openai", False)
                    for url in (gateway_a, gateway_b, gateway_a, gateway_b)]

    statuses = asyncio.run(rate())
    assert [r.status_code for r in statuses] == [200, 200, 429, 429]
    assert_429_in_dialect(statuses[2], "openai", "rate_limit_exceeded")


@requires_redis
def test_a_killed_gateways_reservations_lapse_within_the_lease_ttl(redis_gateways):
    """A gateway is killed with two streams running that reserved most of their user's budget: the user's
    next request, through another gateway, is refused for its budget only until those leases lapse."""
    gateway_a = redis_gateways.urls[0]
    held_cost = expected_cost_of(*chat_request("ollama", True, model=SLOW_MODEL, max_tokens=400))
    small_cost = expected_cost_of(*chat_request("ollama", False, max_tokens=1))
    user_id, key = redis_gateways.user(token_budget_override=2 * held_cost + small_cost - 1, rpm_override=0)
    doomed, doomed_url = redis_gateways.start_gateway("gateway-doomed")
    heartbeat_s = LEASE_TTL_S / 3

    async def scenario():
        async with httpx.AsyncClient(timeout=30) as client:
            held = [await open_slow_stream(client, doomed_url, key) for _ in range(2)]
            doomed.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            locked_out = await call(client, gateway_a, key, "ollama", False, max_tokens=1)
            while (attempt := await call(client, gateway_a, key, "ollama", False, max_tokens=1)).status_code == 429:
                assert time.monotonic() - killed_at < LEASE_TTL_S + MARGIN_S, "locked out past the lease TTL"
                await asyncio.sleep(0.05)
            free_after = time.monotonic() - killed_at
            for response, _ in held:
                await response.aclose()
            return locked_out, attempt, free_after

    locked_out, attempt, free_after = asyncio.run(scenario())
    assert_429_in_dialect(locked_out, "ollama", "insufficient_quota")
    assert attempt.status_code == 200, attempt.text
    # Leases were last renewed at most one heartbeat before the kill: they expire no sooner than that allows.
    assert LEASE_TTL_S - heartbeat_s - 0.5 <= free_after <= LEASE_TTL_S + MARGIN_S

    async def reserved_now() -> int:
        store = RedisCounters(connect(REDIS_URL, 2.0), redis_gateways.redis_prefix)
        try:
            period = period_of(utcnow())
            return (await store.standings([(user_id, period)]))[(user_id, period)].reserved
        finally:
            await store.client.aclose()

    # The dead gateway's reservations went with their leases; the live request settled its own.
    wait_until(lambda: asyncio.run(reserved_now()) == 0, 5, "the dead gateway's reservations to lapse")


def test_a_revoked_key_or_disabled_user_is_refused_by_both_gateways_within_5_s(redis_gateways):
    gateways = redis_gateways
    admin = {"Authorization": f"Bearer {gateways.stack.keys['admin']}"}
    for revoke in ("key", "user"):
        user_id, key = gateways.user("staff")
        headers = {"Authorization": f"Bearer {key}"}
        for url in gateways.urls:
            assert httpx.get(f"{url}/api/tags", headers=headers).status_code == 200  # cached by both
        gateways.bind()
        if revoke == "key":
            key_id = ApiKey.get(ApiKey.prefix == api_keys.key_prefix(key)).id
            answer = httpx.post(f"{gateways.stack.gateway_url}/admin/keys/{key_id}/revoke", headers=admin)
        else:
            answer = httpx.post(f"{gateways.stack.gateway_url}/admin/users/{user_id}", headers=admin,
                                json={"active": False})
        assert answer.status_code == 200, answer.text
        revoked_at = time.monotonic()
        for url in gateways.urls:
            wait_until(lambda u=url, h=headers: httpx.get(f"{u}/api/tags", headers=h).status_code == 401, 10,
                       f"{url} to refuse the {revoke}")
        assert time.monotonic() - revoked_at <= 5
