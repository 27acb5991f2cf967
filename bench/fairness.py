"""Fair sharing measured end to end: the real gateway in front of simulated nodes, under saturation.

One vLLM node with 2 slots serves the benchmark model (`Qwen/Qwen2.5-0.5B-Instruct`); every answer is
exactly `--max-tokens` tokens (vLLM's `ignore_eos`), paced at `--tokens-per-s`, so each request holds a
slot for the same service time. Every user keeps `--in-flight` streamed requests in flight (closed loop:
a finished request is replaced at once). Served tokens are counted from the usage the gateway returns
(`stream_options.include_usage`), each request's tokens spread over the time it held its slot (response
headers to the end of the stream) and counted inside a steady-state window that starts after `--warmup`.

1. three users, faculty / staff / student (weights 3 / 2 / 1): served-token shares and Jain's index of
   share / weight (1.0 = exactly proportional);
2. two students (equal weights): shares;
3. a student idle for `--idle` seconds sends one request while faculty and staff saturate: how long its
   request waits for a slot in the gateway (arrival to grant, from the audit log), against the service
   time of the request whose slot it took, and at the client; with burst credit (the default
   `scheduler_burst_cap`, a short fairness window so the credit fills while the student idles) and
   without (`scheduler_burst_cap=0`);
4. two models: while three users saturate the benchmark model, a fourth sends requests for a model of
   the other node (Ollama, idle) and for a second model of the same vLLM node: their waits against the
   benchmark model's queue.

Run 1 goes twice more on a gateway with the **shipped defaults** (rate limits, the cap on running
requests, the bound on waiting ones, burst credit on; measured once the users spent the credit they
start with): with `--in-flight` streams per user, and with `--in-flight-beyond` (60), and counts every
429. Clients honour `Retry-After` as the SDKs do: a refused request is sent again after it.

Runs 1, 2 and 4 otherwise use `scheduler_burst_cap=0`: in a steady state every user always has requests
waiting and earns no credit anyway; turning bursts off only removes the start-up transient in which
each new user spends its initial credit. Per-key rate limits, per-user caps and bounds are off there.

    PYTHONPATH=. .venv/bin/python bench/fairness.py [--window 45] [--json fairness.json]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextvars
import datetime as dt
import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import aiohttp
import harness
from harness import CHAT_MODEL, NO_LIMITS, Stack, auth, chat_body, report_checks, table
from streams import Exchange, connector, post

SECOND_VLLM_MODEL = "Qwen/Qwen2-VL-2B-Instruct"  # the same vLLM node: shares its 2 slots
OLLAMA_MODEL = "llama3.2"  # the Ollama node only
SLOTS = 2
# Limits off: no rate limit, no cap on running requests, no bound on waiting ones.
LIMITS_OFF = (*NO_LIMITS, "max_queued_per_user=admin=0,faculty=0,staff=0,student=0")
# The Retry-After of the answer a worker's request just got (set per worker task, filled by a trace hook).
RETRY_AFTER: contextvars.ContextVar[dict] = contextvars.ContextVar("retry_after")
WEIGHTS = {"faculty1": 3.0, "staff1": 2.0, "student1": 1.0, "student2": 1.0, "student3": 1.0}


class Load:
    """Users that each keep `in_flight` streamed requests in flight until stopped."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        stack: Stack,
        users: dict[str, str],
        in_flight: int,
        body: Callable[[str], dict],
    ):
        self.session, self.stack, self.users, self.in_flight, self.body = (
            session,
            stack,
            users,
            in_flight,
            body,
        )
        self.exchanges: list[Exchange] = []
        self.current: dict[int, Exchange] = {}
        self.tasks: dict[int, asyncio.Task] = {}
        self.stopping = False

    def start(self) -> Load:
        for user, key in self.users.items():
            for _ in range(self.in_flight):
                worker = len(self.tasks)
                self.tasks[worker] = asyncio.create_task(self.worker(worker, user, key))
        return self

    async def worker(self, worker: int, user: str, key: str) -> None:
        """Closed loop; a refused request (429, 503) is sent again after its Retry-After, as the SDKs do."""
        url = f"{self.stack.gateway_url}/v1/chat/completions"
        answer_headers: dict = {}
        RETRY_AFTER.set(answer_headers)
        while not self.stopping:
            exchange = self.current[worker] = Exchange(user=user)
            self.exchanges.append(exchange)
            answer_headers.clear()
            await post(self.session, url, self.body(user), auth(key), exchange)
            if exchange.status in (429, 503) and not self.stopping:
                await asyncio.sleep(float(answer_headers.get("Retry-After") or 1))
            elif exchange.error and not self.stopping:
                await asyncio.sleep(0.2)  # counted below; don't spin on a failing gateway

    async def stop(self) -> None:
        """No new requests; requests still queued in the gateway are cancelled (the client leaves),
        requests already being served run to their end."""
        self.stopping = True
        for worker, task in self.tasks.items():
            if self.current.get(worker) is None or self.current[worker].headers is None:
                task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def failures(self) -> list[Exchange]:
        return [
            e
            for e in self.exchanges
            if e.status not in (None, 200, 429) or (e.error and e.headers is not None and e.end is not None)
        ]

    def refused(self, user: str | None = None) -> int:
        """429 answers (rate limit, waiting bound): each one a retry the client had to make."""
        return sum(1 for e in self.exchanges if e.status == 429 and (user is None or e.user == user))


async def remember_retry_after(session, trace_context, params) -> None:
    """aiohttp trace hook: keep the answer's Retry-After where the worker that sent the request reads it."""
    answer_headers = RETRY_AFTER.get(None)
    if answer_headers is not None and "Retry-After" in params.response.headers:
        answer_headers["Retry-After"] = params.response.headers["Retry-After"]


def retry_after_tracing() -> aiohttp.TraceConfig:
    tracing = aiohttp.TraceConfig()
    tracing.on_request_end.append(remember_retry_after)
    return tracing


def served_in_window(exchanges: Sequence[Exchange], start: float, end: float, kind: str) -> dict[str, float]:
    """Tokens per user inside [start, end]: each request's usage spread evenly over the time it held
    its slot (headers in to the end of the stream)."""
    served: dict[str, float] = {}
    for exchange in exchanges:
        if not exchange.complete or exchange.usage is None:
            continue
        began, ended = exchange.headers, exchange.end
        overlap = max(0.0, min(ended, end) - max(began, start))
        fraction = overlap / (ended - began) if ended > began else float(start <= ended <= end)
        served[exchange.user] = served.get(exchange.user, 0.0) + fraction * exchange.tokens(kind)
    return served


def jain(values: Sequence[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else float("nan")


def shares_of(served: dict[str, float], users: Sequence[str]) -> dict[str, float]:
    total = sum(served.get(user, 0.0) for user in users)
    return {user: served.get(user, 0.0) / total if total else float("nan") for user in users}


async def saturation(
    session, stack: Stack, users: dict[str, str], args, window: float, label: str,
    in_flight: int | None = None, spend_credit: bool = False,
) -> dict:
    """Everyone saturates; shares in the steady-state window, and over sub-windows of 10 s. With
    `spend_credit` (burst credit on), the window starts once every user spent the credit it started with."""
    body = chat_body(args.max_tokens, stream=True)
    in_flight = in_flight or args.in_flight
    load = Load(session, stack, users, in_flight, lambda user: body).start()
    print(
        f"[fairness] {label}: warm-up {args.warmup:g} s, window {window:g} s ...", file=sys.stderr, flush=True
    )
    await asyncio.sleep(args.warmup)
    if spend_credit:
        await credits_spent(stack, list(users), args.max_tokens + 20)
    start = time.perf_counter()
    await asyncio.sleep(window)
    end = time.perf_counter()
    await load.stop()
    names = list(users)
    weights = {user: WEIGHTS[user] for user in names}
    total_weight = sum(weights.values())
    served = served_in_window(load.exchanges, start, end, "total_tokens")
    generated = served_in_window(load.exchanges, start, end, "completion_tokens")
    shares = shares_of(served, names)
    sub_windows = []
    step = 10.0
    t = start
    while t + step <= end + 1e-6:
        sub_windows.append(shares_of(served_in_window(load.exchanges, t, t + step, "total_tokens"), names))
        t += step
    waits = {
        user: [
            e.headers - e.sent
            for e in load.exchanges
            if e.user == user and e.headers is not None and start <= e.headers <= end
        ]
        for user in names
    }
    capacity = SLOTS * args.tokens_per_s * (end - start)
    # a slot's hand-over: from one stream's end (at the client) to the next grant's response headers
    granted = sorted(e.headers for e in load.exchanges if e.headers is not None)
    handovers = []
    for e in load.exchanges:
        if e.complete and start <= e.end <= end:
            after = bisect.bisect_right(granted, e.end)
            if after < len(granted):
                handovers.append(granted[after] - e.end)
    return {
        "users": names,
        "in_flight": in_flight,
        "weights": weights,
        "window_s": end - start,
        "refused_429": {user: load.refused(user) for user in names},
        "requests_completed": {
            u: sum(1 for e in load.exchanges if e.user == u and e.complete) for u in names
        },
        "failed": len(load.failures()),
        "served_tokens": served,
        "shares": shares,
        "expected_shares": {user: weights[user] / total_weight for user in names},
        "jain_share_over_weight": jain([shares[user] / weights[user] for user in names]),
        "sub_window_shares_min_max": {
            user: (min(s[user] for s in sub_windows), max(s[user] for s in sub_windows)) for user in names
        }
        if sub_windows
        else {},
        "median_queue_wait_s": {
            user: statistics.median(w) if w else float("nan") for user, w in waits.items()
        },
        "slot_utilisation": sum(generated.values()) / capacity,
        "slot_handover_s": harness.summary(handovers),
        "service_s": harness.summary(
            [e.end - e.headers for e in load.exchanges if e.complete and start <= e.headers]
        ),
    }


def scheduler_users(stack: Stack) -> dict[str, dict]:
    """The gateway's latest scheduler snapshot (written to the live queue table every second), by user."""
    path = stack.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        names = dict(db.execute("SELECT id, username FROM user").fetchall())
        rows = db.execute("SELECT data FROM queue_snapshot").fetchall()
    users: dict[str, dict] = {}
    for (data,) in rows:
        for row in json.loads(data).get("users", []):
            users[names.get(row["user_id"], str(row["user_id"]))] = row
    return users


async def credits_spent(stack: Stack, users: Sequence[str], cost: float, limit_s: float = 90) -> float:
    """Wait until none of `users` holds burst credit for another request (a new user starts with a full
    credit, spent first, in arrival order); the seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit_s:
        credits = {u: row.get("burst_credit", 0.0) for u, row in scheduler_users(stack).items()}
        if credits and all(credits.get(u, 0.0) < cost for u in users):
            break
        await asyncio.sleep(1)
    return time.perf_counter() - began


def audit_timeline(stack: Stack, model: str) -> list[dict]:
    """Every answered request for `model` as the gateway timed it (the audit table): who sent it, when it
    arrived, when it was granted its slot and when it gave the slot back, in wall-clock seconds."""
    path = stack.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute(
            "SELECT user.username, request.created_at, request.queue_ms, request.total_ms FROM request "
            "JOIN user ON user.id = request.user_id WHERE request.status = 200 AND request.model = ?",
            (model,),
        ).fetchall()
    timeline = []
    for user, created_at, queue_ms, total_ms in rows:
        arrived = dt.datetime.fromisoformat(created_at).replace(tzinfo=dt.UTC).timestamp()
        timeline.append(
            {
                "user": user,
                "arrived": arrived,
                "granted": arrived + queue_ms / 1000,
                "released": arrived + total_ms / 1000,
            }
        )
    return sorted(timeline, key=lambda row: row["arrived"])


def probe_starts(timeline: list[dict], user: str, since: float) -> list[dict]:
    """For each request of `user` that arrived after `since`: its wait for a slot in the gateway, the
    service time of the request whose slot it took (the last release before its grant), and how many
    requests of others were granted while it waited. A request that takes the first slot to come free
    after it arrives (none granted meanwhile) never waits longer than that service time."""
    others = [row for row in timeline if row["user"] != user]
    releases = sorted((row["released"], row["released"] - row["granted"]) for row in others)
    release_times = [released for released, _ in releases]
    starts = []
    for probe in (row for row in timeline if row["user"] == user and row["arrived"] >= since):
        # The slot is released (and the probe granted) in one step; the audit's release time is taken a
        # moment later, in the same response hook chain: allow 5 ms.
        before = bisect.bisect_right(release_times, probe["granted"] + 0.005) - 1
        followed_service_s = releases[before][1] if before >= 0 else float("nan")
        starts.append(
            {
                "wait_s": probe["granted"] - probe["arrived"],
                "followed_service_s": followed_service_s,
                "others_granted_meanwhile": sum(
                    1 for row in others if probe["arrived"] < row["granted"] < probe["granted"]
                ),
            }
        )
    return starts


async def returning_user(session, stack: Stack, args, label: str, wait_for_credits: bool) -> dict:
    """faculty1 and staff1 saturate throughout; student1 saturates with them for the warm-up, then idles
    `--idle` seconds before each of `--probes` single requests. Each probe's wait for its slot, in the
    gateway (from the audit log) and at the client."""
    body = chat_body(args.max_tokens, stream=True)
    keys = stack.keys
    background = Load(
        session, stack, {u: keys[u] for u in ("faculty1", "staff1")}, args.in_flight, lambda user: body
    ).start()
    student = Load(session, stack, {"student1": keys["student1"]}, args.in_flight, lambda user: body).start()
    print(f"[fairness] {label}: warm-up ...", file=sys.stderr, flush=True)
    await asyncio.sleep(args.warmup)
    drained_after = None
    if wait_for_credits:  # everyone starts with a full burst credit: wait until the saturating users spent it
        waited = await credits_spent(stack, ("faculty1", "staff1", "student1"), args.max_tokens + 20)
        drained_after = args.warmup + waited
    await student.stop()
    probes: list[Exchange] = []
    credit_before: list[float] = []
    probing_since = time.time()
    for _ in range(args.probes):
        await asyncio.sleep(args.idle)
        if wait_for_credits:
            credit_before.append(scheduler_users(stack).get("student1", {}).get("burst_credit", float("nan")))
        exchange = Exchange(user="student1")
        await post(
            session, f"{stack.gateway_url}/v1/chat/completions", body, auth(keys["student1"]), exchange
        )
        probes.append(exchange)
    background_waits = [
        e.headers - e.sent for e in background.exchanges if e.complete and e.sent >= probes[0].sent
    ]
    await background.stop()
    completed = sum(1 for e in probes if e.complete)
    for _ in range(50):  # the gateway's writer thread logs each request a moment after it ends
        starts = probe_starts(audit_timeline(stack, CHAT_MODEL), "student1", probing_since)
        if len(starts) >= completed:
            break
        await asyncio.sleep(0.2)
    waits = [e.headers - e.sent for e in probes if e.complete]
    gateway_waits = [start["wait_s"] for start in starts]
    return {
        "probes": len(probes),
        "failed": len(probes) - completed,
        "idle_s": args.idle,
        "starts": starts,
        "gateway_max_wait_s": max(gateway_waits) if gateway_waits else float("nan"),
        "gateway_median_wait_s": statistics.median(gateway_waits) if gateway_waits else float("nan"),
        "waits_s": waits,
        "max_wait_s": max(waits) if waits else float("nan"),
        "median_wait_s": statistics.median(waits) if waits else float("nan"),
        "saturating_users_median_wait_s": statistics.median(background_waits)
        if background_waits
        else float("nan"),
        "student_credit_before_probe": credit_before,
        "credits_spent_after_s": drained_after,
    }


async def two_models(session, stack: Stack, args) -> dict:
    """Three users saturate the benchmark model with a deep queue; student2 sends, one at a time, requests
    for the Ollama node's model and for the vLLM node's second model."""
    body = chat_body(args.max_tokens, stream=True)
    keys = stack.keys
    load = Load(
        session,
        stack,
        {u: keys[u] for u in ("faculty1", "staff1", "student1")},
        2 * args.in_flight,
        lambda user: body,
    ).start()
    print("[fairness] two models: warm-up ...", file=sys.stderr, flush=True)
    await asyncio.sleep(args.warmup)
    probes: dict[str, list[Exchange]] = {OLLAMA_MODEL: [], SECOND_VLLM_MODEL: []}
    started = time.perf_counter()
    for _ in range(args.probes):
        for model in probes:
            probe_body = chat_body(args.max_tokens, stream=True, model=model)
            exchange = Exchange(user="student2")
            await post(
                session,
                f"{stack.gateway_url}/v1/chat/completions",
                probe_body,
                auth(keys["student2"]),
                exchange,
            )
            probes[model].append(exchange)
            await asyncio.sleep(0.5)
    ended = time.perf_counter()
    await load.stop()
    queued = [e.headers - e.sent for e in load.exchanges if e.complete and started <= e.sent <= ended]
    result = {
        "saturated_model": CHAT_MODEL,
        "saturating_requests_in_flight": 3 * 2 * args.in_flight,
        "saturated_model_median_wait_s": statistics.median(queued) if queued else float("nan"),
        "probes": {},
    }
    for model, exchanges in probes.items():
        waits = [e.headers - e.sent for e in exchanges if e.complete]
        result["probes"][model] = {
            "node": "sim-ollama (idle)"
            if model == OLLAMA_MODEL
            else "sim-vllm (shared with the saturated model)",
            "failed": sum(1 for e in exchanges if not e.complete),
            "errors": [e.error for e in exchanges if e.error][:3],
            "waits_s": waits,
            "median_wait_s": statistics.median(waits) if waits else float("nan"),
            "max_wait_s": max(waits) if waits else float("nan"),
        }
    return result


def stack_options(args, burst: bool, limits: bool = False) -> dict:
    """Limits off unless `limits`: then every limit, bound and cap as shipped."""
    options = [] if limits else list(LIMITS_OFF)
    if not burst:
        options.append("scheduler_burst_cap=0")
    if args.quantum:
        options.append(f"scheduler_quantum={args.quantum}")
    return {
        "gateway_options": tuple(options),
        "max_concurrent": SLOTS,
        "sim_args": ("--tokens-per-s", str(args.tokens_per_s)),
    }


async def run_all(args) -> dict:
    results: dict = {"machine": harness.machine(), "parameters": vars(args).copy()}
    service_s = args.max_tokens / args.tokens_per_s
    results["service_time_s"] = service_s
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    three = ("faculty1", "staff1", "student1")
    with harness.cluster("fairness-defaults", **stack_options(args, burst=True, limits=True)) as stack:
        async with aiohttp.ClientSession(
            connector=connector(), timeout=timeout, trace_configs=[retry_after_tracing()]
        ) as session:
            keys = stack.keys
            results["three_users_defaults"] = await saturation(
                session, stack, {u: keys[u] for u in three}, args, args.window,
                "three users, shipped defaults", spend_credit=True,
            )
            results["three_users_defaults_beyond"] = await saturation(
                session, stack, {u: keys[u] for u in three}, args, args.window,
                f"three users, shipped defaults, {args.in_flight_beyond} streams each",
                in_flight=args.in_flight_beyond, spend_credit=True,
            )
    with harness.cluster("fairness", **stack_options(args, burst=False)) as stack:
        for name in ("student2", "student3"):
            stack.flask("users", "create", name, "--role", "student")
            stack.keys[name] = stack.new_key(name, "bench")
        async with aiohttp.ClientSession(
            connector=connector(), timeout=timeout, trace_configs=[retry_after_tracing()]
        ) as session:
            keys = stack.keys
            results["three_users"] = await saturation(
                session,
                stack,
                {u: keys[u] for u in ("faculty1", "staff1", "student1")},
                args,
                args.window,
                "three users",
            )
            results["two_equal_users"] = await saturation(
                session,
                stack,
                {u: keys[u] for u in ("student2", "student3")},
                args,
                args.window2,
                "two equal users",
            )
            results["returning_user_without_burst"] = await returning_user(
                session, stack, args, "returning user, burst credit off", wait_for_credits=False
            )
            results["two_models"] = await two_models(session, stack, args)
    environment = {"SCHEDULER_FAIRNESS_WINDOW": str(args.fairness_window)}
    with harness.cluster(
        "fairness-burst", environment=environment, **stack_options(args, burst=True)
    ) as stack:
        async with aiohttp.ClientSession(connector=connector(), timeout=timeout) as session:
            results["returning_user_with_burst"] = await returning_user(
                session, stack, args, "returning user, burst credit on", wait_for_credits=True
            )
            results["returning_user_with_burst"]["fairness_window_s"] = args.fairness_window
    return results


def report(results: dict) -> None:
    service_s = results["service_time_s"]
    machine = results["machine"]
    p = results["parameters"]
    print(
        f"fairness: {machine['cpus']} CPUs shared by gateway, nodes and load ({machine['cpu_model']}); "
        f"1 vLLM node, {SLOTS} slots, answers of {p['max_tokens']} tokens at {p['tokens_per_s']} tokens/s "
        f"(service time {service_s:.2f} s), {p['in_flight']} streams in flight per user, "
        f"quantum {p['quantum'] or 'default (1000)'}"
    )
    checks = []
    for key, title in (
        ("three_users_defaults", f"1a. three users, shipped defaults, {p['in_flight']} streams each"),
        ("three_users_defaults_beyond", f"1b. three users, shipped defaults, {p['in_flight_beyond']} streams each"),
        ("three_users", "1c. three users, limits off"),
        ("two_equal_users", "2. two equal users, limits off"),
    ):
        run = results[key]
        rows = []
        for user in run["users"]:
            low, high = run["sub_window_shares_min_max"].get(user, (float("nan"), float("nan")))
            rows.append(
                [
                    user,
                    run["weights"][user],
                    run["expected_shares"][user],
                    run["shares"][user],
                    low,
                    high,
                    run["requests_completed"][user],
                    run["refused_429"][user],
                    run["median_queue_wait_s"][user],
                ]
            )
        print()
        print(
            table(
                f"{title}: steady-state window {run['window_s']:.0f} s, Jain's index (share/weight) "
                f"{run['jain_share_over_weight']:.4f}, slot utilisation {run['slot_utilisation']:.3f} "
                f"(service p50 {run['service_s']['p50']:.3f} s, slot hand-over p50 "
                f"{1000 * run['slot_handover_s']['p50']:.0f} ms), failed requests {run['failed']}",
                ["user", "weight", "expected", "share", "10 s min", "10 s max", "requests", "429s", "wait p50 s"],
                rows,
            )
        )
        if key.startswith("three_users"):
            tolerance = 0.03 if key == "three_users_defaults_beyond" else 0.02
            ok = all(abs(run["shares"][u] - run["expected_shares"][u]) <= tolerance for u in run["users"])
            checks.append((f"{title}: shares within ±{tolerance} of 0.500/0.333/0.167", ok))
            checks.append(
                (
                    f"{title}: Jain's index ≥ 0.99 ({run['jain_share_over_weight']:.4f})",
                    run["jain_share_over_weight"] >= 0.99,
                )
            )
            refused = sum(run["refused_429"].values())
            if key == "three_users_defaults":
                checks.append((f"{title}: no 429 at all ({refused})", refused == 0))
            if key == "three_users_defaults_beyond":
                # 60 streams each are within every role's default waiting bound (student 256): none may be
                # refused; and nobody is locked out: every user is served throughout the window.
                served_all = all(low > 0 for low, _ in run["sub_window_shares_min_max"].values())
                checks.append((
                    f"{title}: 429 only beyond the waiting bound (none here: {refused}); every user served in "
                    "every 10 s of the window",
                    refused == 0 and served_all,
                ))
        else:
            ok = all(0.47 <= run["shares"][u] <= 0.53 for u in run["users"])
            checks.append(("two equal users within 0.47–0.53", ok))
        checks.append(
            (
                f"{title}: idle capacity used (slot utilisation {run['slot_utilisation']:.3f} ≥ 0.95)",
                run["slot_utilisation"] >= 0.95,
            )
        )
    rows = []
    for key, label in (
        ("returning_user_with_burst", "burst credit on"),
        ("returning_user_without_burst", "burst credit off (scheduler_burst_cap=0)"),
    ):
        run = results[key]
        rows.append(
            [
                label,
                run["probes"],
                run["gateway_median_wait_s"],
                run["gateway_max_wait_s"],
                max(
                    (start["wait_s"] / start["followed_service_s"] for start in run["starts"]),
                    default=float("nan"),
                ),
                run["median_wait_s"],
                run["max_wait_s"],
                run["saturating_users_median_wait_s"],
                sum(start["others_granted_meanwhile"] for start in run["starts"]),
                run["failed"],
            ]
        )
    print()
    print(
        table(
            f"3. a student idle {results['returning_user_with_burst']['idle_s']:g} s sends one request while "
            f"faculty and staff saturate (service time {service_s:.2f} s at the node)",
            [
                "",
                "probes",
                "slot wait p50 s",
                "slot wait max s",
                "max wait / service it followed",
                "at the client p50 s",
                "at the client max s",
                "saturating users' p50 s",
                "others granted meanwhile",
                "failed",
            ],
            rows,
        )
    )
    burst = results["returning_user_with_burst"]
    within = [start["wait_s"] <= start["followed_service_s"] for start in burst["starts"]]
    checks.append(
        (
            f"returning user's request starts within one service time: {sum(within)} of {burst['probes']} probes "
            f"waited for a slot no longer than the request whose slot they took had held it "
            f"(slot wait max {burst['gateway_max_wait_s']:.3f} s)",
            burst["failed"] == 0 and len(within) == burst["probes"] and all(within),
        )
    )
    run = results["two_models"]
    rows = [
        [
            CHAT_MODEL,
            "sim-vllm (saturated)",
            run["saturating_requests_in_flight"],
            "",
            run["saturated_model_median_wait_s"],
            "",
        ]
    ]
    for model, probe in run["probes"].items():
        rows.append(
            [model, probe["node"], 1, len(probe["waits_s"]), probe["median_wait_s"], probe["max_wait_s"]]
        )
    print()
    print(
        table(
            "4. two models: while three users saturate one model, a fourth asks for others",
            ["model", "node", "in flight", "probes", "wait p50 s", "wait max s"],
            rows,
        )
    )
    ollama = run["probes"][OLLAMA_MODEL]
    checks.append(
        (
            f"no head-of-line blocking: a model on an idle node waits {ollama['max_wait_s']:.3f} s at most "
            f"(saturated model's queue {run['saturated_model_median_wait_s']:.2f} s)",
            ollama["failed"] == 0 and ollama["max_wait_s"] < service_s,
        )
    )
    shared = run["probes"][SECOND_VLLM_MODEL]
    checks.append(
        (
            f"a second model on the saturated node waits its turn, not the backlog "
            f"({shared['median_wait_s']:.2f} s < {run['saturated_model_median_wait_s']:.2f} s)",
            shared["failed"] == 0 and shared["median_wait_s"] < run["saturated_model_median_wait_s"],
        )
    )
    report_checks(results, checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens-per-s", type=int, default=1000, help="the simulated nodes' pacing")
    parser.add_argument("--max-tokens", type=int, default=500, help="tokens in every answer")
    parser.add_argument(
        "--in-flight", type=int, default=12, help="streamed requests each user keeps in flight"
    )
    parser.add_argument(
        "--in-flight-beyond", type=int, default=60,
        help="streamed requests each user keeps in flight in the second run with the shipped defaults",
    )
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before the steady-state window")
    parser.add_argument("--window", type=float, default=45.0, help="steady-state window of run 1, seconds")
    parser.add_argument("--window2", type=float, default=30.0, help="steady-state window of run 2, seconds")
    parser.add_argument("--probes", type=int, default=8, help="requests of the returning user, and per model")
    parser.add_argument(
        "--idle", type=float, default=6.0, help="seconds the returning user idles before each"
    )
    parser.add_argument(
        "--fairness-window",
        type=int,
        default=30,
        help="SCHEDULER_FAIRNESS_WINDOW of the burst-credit run: idling this long fills the credit",
    )
    parser.add_argument("--quantum", type=int, default=0, help="scheduler_quantum (0: the gateway's default)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    harness.run_and_report(run_all, report, args)


if __name__ == "__main__":
    main()
