"""Hostile input through a real gateway: no 5xx, no hang, no fetch, nothing left held, still answering.

Hypothesis draws requests to every inference and catalog path in both dialects (tests/support/
hostile_requests.py says what they hold: valid requests that reach a node and stream, the same with
hostile fields, garbage bytes, hostile headers, framing lies over raw sockets) and eight threads send
them. Every answer is judged as it comes; the tests then read the verdicts and what the cluster
still holds.

Two stacks: one counting limits in process, with the shipped defaults except rate limits raised so
that 10 000 requests are not all 429; one with the shipped defaults and Redis, for 1 000 requests,
so that refusals by every limit must give back what they took, in Redis too.
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from prometheus_client.parser import text_string_to_metric_families

from sim.stack import Stack
from store import database
from store.db import open_database
from store.models import Quota
from tests.support.cluster import start_cluster
from tests.support.hostile_requests import (
    ANSWER_LIMIT_S,
    CHAT_MODELS,
    FailureLog,
    FetchTrap,
    Vocabulary,
    hostile_requests,
    replay_alone,
    send,
)
from tests.unit.policy.support import REDIS_URL, delete_prefix, redis_reachable

# The fuzz runs in a module fixture: minutes, not the suite's default two.
pytestmark = pytest.mark.timeout(900)

RAISED_EXAMPLES = 10_000
SHIPPED_EXAMPLES = 1_000
SENDERS = 8
# Shipped defaults except the requests per key per minute: enough for 10 000 requests in a few minutes.
RAISED_RATE = "rate_limit_rpm=admin=6000,faculty=6000,staff=6000,student=6000"
SHIPPED_CONCURRENCY = {"admin": 32, "faculty1": 16, "staff1": 8, "student1": 4}  # max_concurrent_per_user's default
STALL_REPLAYS = 20
SETTLE_S = 10
WRITER_CATCH_UP_S = 3  # how long held things may take to come back after the last answer
MEMORY_GROWTH_LIMIT = 300 * 2**20


@dataclass
class FuzzRun:
    stack: Stack
    log: FailureLog
    trap: FetchTrap
    seconds: float
    rss_before: int
    rss_after: int
    gateway_log: str


def fuzz(stack: Stack, trap: FetchTrap, examples: int) -> FuzzRun:
    """Send `examples` hostile requests, SENDERS at a time; every answer judged into the FailureLog."""
    gateway = httpx.URL(stack.gateway_url)
    vocab = Vocabulary(keys=dict(stack.keys), trap_urls=trap.urls, trap_port=trap.port, gateway_port=gateway.port)
    log = FailureLog()
    room = threading.BoundedSemaphore(SENDERS * 2)
    client = httpx.Client(timeout=httpx.Timeout(ANSWER_LIMIT_S), limits=httpx.Limits(max_connections=SENDERS * 2),
                          trust_env=False)
    pool = ThreadPoolExecutor(SENDERS)
    errors: list[BaseException] = []

    def one(request) -> None:
        try:
            log.record(request, send(client, stack.gateway_url, request))
        except BaseException as exc:  # a bug of the test itself: report it, never swallow it
            errors.append(exc)
        finally:
            room.release()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(hostile_requests(vocab))
    def hostile(request) -> None:
        room.acquire()
        pool.submit(one, request)

    rss_before = resident_bytes(stack)
    started = time.monotonic()
    try:
        hostile()
    finally:
        pool.shutdown(wait=True)
        client.close()
    seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    # A request that blocks the gateway's event loop slows every request in flight with it: replay the
    # slow ones alone to tell the culprits from the bystanders.
    for request in log.slow[:STALL_REPLAYS]:
        log.record_stall(request, *replay_alone(stack.gateway_url, request))
    # Memory once everything has come back and the writer has caught up: what stays is what leaked.
    settled(lambda: gateway_gauges(stack))
    time.sleep(WRITER_CATCH_UP_S)
    return FuzzRun(stack, log, trap, seconds, rss_before, resident_bytes(stack), stack.service("gateway").output())


def resident_bytes(stack: Stack) -> int:
    pid = stack.service("gateway").process.pid
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def trap():
    running = FetchTrap()
    yield running
    running.close()


@pytest.fixture(scope="module")
def raised_run(tmp_path_factory, trap) -> FuzzRun:
    work_dir = tmp_path_factory.mktemp("hostile-raised")
    stack = start_cluster(work_dir, f"sqlite:///{work_dir / 'mindrouter.db'}", gateway_options=(RAISED_RATE,),
                          sim_args=("--tokens-per-s", "1000"))
    try:
        run = fuzz(stack, trap, RAISED_EXAMPLES)
        print(f"\n{run.log.sent} hostile requests ({run.log.unsent} unsendable) in {run.seconds:.0f} s; "
              f"statuses {run.log.statuses}")
        yield run
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory, trap) -> FuzzRun:
    assert redis_reachable(), f"no Redis server at {REDIS_URL} (`make services` starts one)"
    prefix = f"mindrouter-test-{secrets.token_hex(6)}"
    work_dir = tmp_path_factory.mktemp("hostile-shipped")
    # The shipped limits and budget; a Redis timeout a loaded test machine does not trip (a fallback to
    # in-process counters would leave nothing in Redis to check).
    stack = start_cluster(work_dir, f"sqlite:///{work_dir / 'mindrouter.db'}",
                          gateway_options=(f"redis_key_prefix={prefix}", "redis_timeout_ms=3000"),
                          environment={"REDIS_URL": REDIS_URL, "DEFAULT_TOKEN_BUDGET": "100000"},
                          sim_args=("--tokens-per-s", "1000"))
    stack.redis_prefix = prefix
    try:
        run = fuzz(stack, trap, SHIPPED_EXAMPLES)
        print(f"\n{run.log.sent} hostile requests ({run.log.unsent} unsendable) in {run.seconds:.0f} s; "
              f"statuses {run.log.statuses}")
        yield run
    finally:
        stack.stop()
        delete_prefix(prefix)


# ---- what the cluster holds -----------------------------------------------------------------------

def gateway_gauges(stack: Stack) -> dict[str, float]:
    totals = {"mindrouter_in_flight_requests": 0.0, "mindrouter_queued_requests": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{stack.gateway_url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def node_load(stack: Stack) -> dict[str, float]:
    """Requests the simulated nodes are running or queueing (their own stats, and vLLM's /metrics)."""
    load = {}
    for name, url in (("ollama", stack.ollama_url), ("vllm", stack.vllm_url)):
        stats = httpx.get(f"{url}/_sim/stats", timeout=5).json()
        load[f"{name} running"], load[f"{name} waiting"] = stats["running"], stats["waiting"]
    for family in text_string_to_metric_families(httpx.get(f"{stack.vllm_url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                load[sample.name] = load.get(sample.name, 0) + sample.value
    return load


def reserved_in_database(stack: Stack) -> dict[int, int]:
    """Tokens each user still has reserved, as the gateway last wrote it back (every quota_refresh_s)."""
    db = open_database(stack.env["DATABASE_URL"])
    database.initialize(db)
    try:
        return {row.user_id: row.reserved for row in Quota.select() if row.reserved}
    finally:
        db.close()


def held_in_redis(prefix: str) -> dict[str, object]:
    """Backend slot leases and token reservations still in Redis under `prefix`."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    held: dict[str, object] = {}
    try:
        for key in client.scan_iter(match=f"{prefix}:backend:*:leases", count=1000):
            if client.zcard(key):
                held[key] = client.zrange(key, 0, -1)
        for key in client.scan_iter(match=f"{prefix}:quota:*", count=1000):
            kind = client.type(key)
            if key.endswith(":leases") and kind == "zset" and client.zcard(key):
                held[key] = client.zrange(key, 0, -1)
            elif key.endswith(":amounts") and kind == "hash" and client.hlen(key):
                held[key] = client.hgetall(key)
            elif kind == "hash" and not key.endswith(":amounts") and int(client.hget(key, "reserved") or 0):
                held[key] = client.hgetall(key)
    finally:
        client.close()
    return held


def settled(read, timeout: float = SETTLE_S):
    """Poll `read` until it reports nothing held (all zero or empty); its last reading either way."""
    deadline = time.monotonic() + timeout
    while True:
        reading = read()
        empty = not any(reading.values()) if isinstance(reading, dict) else not reading
        if empty or time.monotonic() > deadline:
            return reading
        time.sleep(0.25)


def chat(stack: Stack, key: str, dialect: str, stream: bool) -> httpx.Response:
    if dialect == "openai":
        path, body = "/v1/chat/completions", {"model": "Qwen/Qwen2.5-0.5B-Instruct", "max_tokens": 4, "stream": stream,
                                              "messages": [{"role": "user", "content": "still there?"}]}
    else:
        path, body = "/api/chat", {"model": "llama3.2", "stream": stream, "options": {"num_predict": 4},
                                   "messages": [{"role": "user", "content": "still there?"}]}
    return httpx.post(f"{stack.gateway_url}{path}", json=body, timeout=15, headers={"Authorization": f"Bearer {key}"})


def assert_no_failures(run: FuzzRun, which) -> None:
    kept = FailureLog(sent=run.log.sent, unsent=run.log.unsent, statuses=run.log.statuses)
    for key, examples in run.log.groups.items():
        if which(key[0]):
            kept.groups[key], kept.counts[key] = examples, run.log.counts[key]
    assert not kept.groups, (f"{sum(kept.counts.values())} of {run.log.sent} hostile requests failed "
                             f"(statuses seen: {run.log.statuses}):{kept.report(run.gateway_log)}")


def is_error_shape(problem: str) -> bool:
    return problem.startswith("error body")


# ---- in-process limits, raised rates, 10 000 requests ---------------------------------------------

def test_ten_thousand_hostile_requests_were_sent(raised_run):
    assert raised_run.log.sent >= RAISED_EXAMPLES


def test_no_hostile_request_gets_a_5xx_or_hangs(raised_run):
    assert_no_failures(raised_run, lambda problem: not is_error_shape(problem))


def test_hostile_requests_get_errors_in_the_dialect_of_their_path(raised_run):
    assert_no_failures(raised_run, is_error_shape)


def test_no_url_in_a_hostile_request_is_fetched(raised_run):
    assert raised_run.trap.hits == []


def test_no_slot_or_queue_entry_stays_held_after_hostile_requests(raised_run):
    assert settled(lambda: gateway_gauges(raised_run.stack)) == {
        "mindrouter_in_flight_requests": 0, "mindrouter_queued_requests": 0}
    load = settled(lambda: node_load(raised_run.stack))
    assert not any(load.values()), load


def test_no_token_reservation_stays_held_after_hostile_requests(raised_run):
    assert settled(lambda: reserved_in_database(raised_run.stack), timeout=20) == {}


def test_every_user_can_still_run_its_full_concurrency_after_hostile_requests(raised_run):
    """A concurrency lease a hostile request kept would refuse one of these with 429."""
    stack = raised_run.stack

    def one(user: str) -> httpx.Response:
        return httpx.post(f"{stack.gateway_url}/api/generate", timeout=30,
                          headers={"Authorization": f"Bearer {stack.keys[user]}"},
                          json={"model": CHAT_MODELS[0], "prompt": "hold on", "stream": False,
                                "options": {"num_predict": 30}})

    users = [user for user, limit in SHIPPED_CONCURRENCY.items() for _ in range(limit)]
    with ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(one, users))
    refused = [(user, a.status_code, a.text[:200]) for user, a in zip(users, answers) if a.status_code != 200]
    assert refused == []


def test_the_gateway_still_answers_after_hostile_requests(raised_run):
    stack = raised_run.stack
    assert httpx.get(f"{stack.gateway_url}/healthz", timeout=5).status_code == 200
    for dialect in ("openai", "ollama"):
        for stream in (False, True):
            answer = chat(stack, stack.keys["staff1"], dialect, stream)
            assert answer.status_code == 200 and answer.text, (dialect, stream, answer.text[:500])


def test_gateway_memory_stays_bounded_under_hostile_requests(raised_run):
    growth = raised_run.rss_after - raised_run.rss_before
    assert growth < MEMORY_GROWTH_LIMIT, (
        f"gateway RSS grew {growth / 2**20:.0f} MiB over {raised_run.log.sent} hostile requests "
        f"({raised_run.rss_before / 2**20:.0f} → {raised_run.rss_after / 2**20:.0f} MiB)")


# ---- the shipped limits and budget, counted in Redis, 1 000 requests ------------------------------

def test_with_shipped_limits_and_redis_no_hostile_request_gets_a_5xx_or_hangs(shipped_run):
    assert shipped_run.log.sent >= SHIPPED_EXAMPLES
    assert_no_failures(shipped_run, lambda problem: True)


def test_with_shipped_limits_and_redis_refusals_give_back_every_lease_and_reservation(shipped_run):
    stack = shipped_run.stack
    assert settled(lambda: held_in_redis(stack.redis_prefix), timeout=5) == {}
    assert settled(lambda: gateway_gauges(stack)) == {
        "mindrouter_in_flight_requests": 0, "mindrouter_queued_requests": 0}
    load = settled(lambda: node_load(stack))
    assert not any(load.values()), load
    assert shipped_run.trap.hits == []


def test_with_shipped_limits_and_redis_the_gateway_still_answers(shipped_run):
    stack = shipped_run.stack
    name = f"after-fuzz-{secrets.token_hex(3)}"
    stack.flask("users", "create", name, "--role", "staff", "--password", secrets.token_hex(8))
    key = stack.new_key(name, "after hostile input")
    for dialect in ("openai", "ollama"):
        answer = chat(stack, key, dialect, stream=dialect == "ollama")
        assert answer.status_code == 200, (dialect, answer.text[:500])
