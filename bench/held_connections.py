"""Many requests held at once by the gateway: its memory before, during and after, and none lost.

1. queued: a node with 2 slots, both held for `--queue-hold-s` seconds by long requests, and `--count`
   requests queued in the gateway behind them (sent as fast as the gateway queues them); when the long
   ones end the queue drains, and every request must be answered.
2. streams: `--count` streamed requests open together on a node with as many slots, each a trickle of
   `--stream-tokens` tokens over about `--hold-s` seconds; every one must end with all its tokens.
   They are opened as fast as the gateway takes them (at most `--opening` waiting for their response
   headers at a time), so `--hold-s` must exceed the ramp for all of them to be open at once.

Each phase has a stack of its own: memory a phase leaves behind stays with the gateway process.
The gateway's resident memory (RSS), open descriptors and the number of requests it holds are sampled
every half second. DESIGN section 8: 2000 concurrent streams or queued requests, < 150 MB RSS, none lost.

    PYTHONPATH=. .venv/bin/python bench/held_connections.py [--count 2000] [--json held.json]

The descriptor limit is raised for this process before the stack starts, so the gateway inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator

import aiohttp
import harness
from harness import NO_LIMITS, Stack, auth, chat_body, report_checks, table
from streams import Exchange, connector, post

QUEUE_MODEL = "bench/queued-0.5B"
USERS = ("faculty1", "staff1", "student1", "admin")
RSS_TARGET_MB = 150
QUEUE_NODE_TOKENS_PER_S = 50


class Sampler:
    """The gateway's RSS, descriptors and held requests, every `interval` seconds."""

    def __init__(self, pid: int, exchanges: list[Exchange], interval: float = 0.5):
        self.pid, self.exchanges, self.interval = pid, exchanges, interval
        self.samples: list[dict] = []
        self.task: asyncio.Task | None = None
        self.started = time.perf_counter()
        self.cpu = (self.started, harness.cpu_seconds(pid))

    def held(self) -> int:
        return sum(1 for e in self.exchanges if e.sent and e.end is None and e.error is None)

    def sample(self) -> dict:
        now, cpu = time.perf_counter(), harness.cpu_seconds(self.pid)
        busy = (cpu - self.cpu[1]) / max(1e-3, now - self.cpu[0])
        self.cpu = (now, cpu)
        row = {
            "t": now - self.started,
            "cpu": busy,
            "rss_mb": harness.rss_mb(self.pid),
            "fds": harness.open_fds(self.pid),
            "held": self.held(),
            "streaming": sum(1 for e in self.exchanges if e.headers and e.end is None and e.error is None),
        }
        self.samples.append(row)
        return row

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    def __exit__(self, *exc) -> None:
        self.task.cancel()

    def peak(self, field: str) -> dict:
        return max(self.samples, key=lambda row: (row[field], row["rss_mb"]))


async def launch_streams(
    session: aiohttp.ClientSession,
    stack: Stack,
    body: dict,
    count: int,
    exchanges: list[Exchange],
    opening: int,
) -> list[asyncio.Task]:
    """`count` streams, spread over the users, at most `opening` of them waiting for their response headers
    at a time: the ramp goes as fast as the gateway opens streams (a closed loop), never faster."""
    url = f"{stack.gateway_url}/v1/chat/completions"
    gate = asyncio.Semaphore(opening)

    async def one(exchange: Exchange, key: str) -> Exchange:
        async with gate:
            task = asyncio.create_task(post(session, url, body, auth(key), exchange))
            while exchange.headers is None and not task.done():
                await asyncio.sleep(0.02)
        return await task

    tasks = []
    for n in range(count):
        user = USERS[n % len(USERS)]
        exchange = Exchange(user=user)
        exchanges.append(exchange)
        tasks.append(asyncio.create_task(one(exchange, stack.keys[user])))
    while sum(1 for e in exchanges if e.headers or e.error or e.end) < count:
        await asyncio.sleep(0.05)
    return tasks


async def queued_now(session: aiohttp.ClientSession, stack: Stack, model: str) -> float:
    """The gateway's own count of requests waiting for a slot for `model` (its /metrics)."""
    async with session.get(f"{stack.gateway_url}/metrics") as response:
        text = await response.text()
    prefix = f'mindrouter_queued_requests{{model="{model}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


async def launch_queued(
    session: aiohttp.ClientSession,
    stack: Stack,
    body: dict,
    count: int,
    exchanges: list[Exchange],
    opening: int,
) -> list[asyncio.Task]:
    """`count` requests that will queue, at most `opening` of them not yet queued (by the gateway's own
    gauge) at a time: a closed-loop ramp, as for the streams."""
    url = f"{stack.gateway_url}/v1/chat/completions"
    tasks = []
    queued = 0.0
    for n in range(count):
        while n - queued - sum(1 for e in exchanges if e.end or e.error) >= opening:
            await asyncio.sleep(0.05)
            queued = await queued_now(session, stack, body["model"])
        user = USERS[n % len(USERS)]
        exchange = Exchange(user=user)
        exchanges.append(exchange)
        tasks.append(asyncio.create_task(post(session, url, body, auth(stack.keys[user]), exchange)))
    while queued + sum(1 for e in exchanges if e.end or e.error) < count:
        await asyncio.sleep(0.1)
        queued = await queued_now(session, stack, body["model"])
    return tasks


def outcome(exchanges: list[Exchange], expected_tokens: int) -> dict:
    complete = [e for e in exchanges if e.complete]
    whole = [e for e in complete if e.tokens("completion_tokens") == expected_tokens]
    errors: dict[str, int] = {}
    for e in exchanges:
        if not e.complete:
            reason = f"{e.status} {(e.error or '')[:80]}"
            errors[reason] = errors.get(reason, 0) + 1
    return {
        "sent": len(exchanges),
        "completed": len(complete),
        "with_all_tokens": len(whole),
        "lost": len(exchanges) - len(whole),
        "errors": errors,
    }


def ramp_cpu(sampler: Sampler, ramp_s: float) -> float:
    """The gateway's mean CPU use (1.0 = one core) while the requests came in."""
    during = [row["cpu"] for row in sampler.samples[1:] if row["t"] <= ramp_s]
    return sum(during) / len(during) if during else float("nan")


async def warm_up(session: aiohttp.ClientSession, stack: Stack, body: dict) -> None:
    """One request of each user before measuring: every key verified once, every path taken once."""
    for user in USERS:
        warm = await post(session, f"{stack.gateway_url}/v1/chat/completions", body, auth(stack.keys[user]))
        assert warm.complete, warm.error


async def settle(pid: int, seconds: float = 5.0) -> float:
    await asyncio.sleep(seconds)
    return harness.rss_mb(pid)


async def streams_phase(stack: Stack, args) -> dict:
    pid = harness.gateway_pid(stack)
    tokens = args.stream_tokens
    body = chat_body(tokens, stream=True)
    exchanges: list[Exchange] = []
    timeout = aiohttp.ClientTimeout(total=args.hold_s * 4 + 300, sock_connect=60)
    async with aiohttp.ClientSession(connector=connector(), timeout=timeout) as session:
        await warm_up(session, stack, chat_body(2, stream=True))
        before = await settle(pid, 2.0)
        print(
            f"[held] {args.count} streams of {tokens} tokens over ~{args.hold_s:g} s ...",
            file=sys.stderr,
            flush=True,
        )
        with Sampler(pid, exchanges) as sampler:
            started = time.perf_counter()
            tasks = await launch_streams(session, stack, body, args.count, exchanges, args.opening)
            ramp_s = time.perf_counter() - started
            await asyncio.wait(tasks, timeout=args.hold_s * 3 + 120)
            for task in tasks:
                task.cancel()  # anything still open after that is counted as lost
            await asyncio.gather(*tasks, return_exceptions=True)
            elapsed = time.perf_counter() - started
        after = await settle(pid)
    peak = sampler.peak("streaming")
    return {
        "requests": args.count,
        "tokens_per_stream": tokens,
        "ramp_s": ramp_s,
        "elapsed_s": elapsed,
        "all_open_at_once": peak["streaming"] == args.count,
        "peak_concurrent_streams": peak["streaming"],
        "gateway_cpu_during_ramp": ramp_cpu(sampler, ramp_s),
        "rss_mb_at_peak_streams": peak["rss_mb"],
        "fds_at_peak_streams": peak["fds"],
        "rss_mb_before": before,
        "rss_mb_max": max(s["rss_mb"] for s in sampler.samples),
        "rss_mb_after": after,
        "outcome": outcome(exchanges, tokens),
        "samples": sampler.samples,
    }


async def queued_phase(stack: Stack, args) -> dict:
    pid = harness.gateway_pid(stack)
    exchanges: list[Exchange] = []
    timeout = aiohttp.ClientTimeout(total=args.queue_hold_s * 4 + 300, sock_connect=60)
    blocker_tokens = min(8000, int(args.queue_hold_s * QUEUE_NODE_TOKENS_PER_S))  # within the model's context
    async with aiohttp.ClientSession(connector=connector(), timeout=timeout) as session:
        await warm_up(session, stack, chat_body(1, stream=False, model=QUEUE_MODEL))
        before = await settle(pid, 2.0)
        print(
            f"[held] 2 slots held for {args.queue_hold_s:g} s, {args.count} requests queued behind them ...",
            file=sys.stderr,
            flush=True,
        )
        blockers = [Exchange(user="faculty1"), Exchange(user="faculty1")]
        blocking = [
            asyncio.create_task(
                post(
                    session,
                    f"{stack.gateway_url}/v1/chat/completions",
                    chat_body(blocker_tokens, stream=False, model=QUEUE_MODEL),
                    auth(stack.keys["faculty1"]),
                    blocker,
                )
            )
            for blocker in blockers
        ]
        await asyncio.sleep(1.0)
        with Sampler(pid, exchanges) as sampler:
            started = time.perf_counter()
            tasks = await launch_queued(
                session,
                stack,
                chat_body(1, stream=False, model=QUEUE_MODEL),
                args.count,
                exchanges,
                args.opening,
            )
            ramp_s = time.perf_counter() - started
            await asyncio.wait(tasks + blocking, timeout=args.queue_hold_s * 3 + 120)
            for task in tasks + blocking:
                task.cancel()
            await asyncio.gather(*tasks, *blocking, return_exceptions=True)
            elapsed = time.perf_counter() - started
        after = await settle(pid)
    peak = sampler.peak("held")
    return {
        "requests": args.count,
        "ramp_s": ramp_s,
        "elapsed_s": elapsed,
        "all_queued_at_once": peak["held"] == args.count,
        "peak_queued": peak["held"],
        "gateway_cpu_during_ramp": ramp_cpu(sampler, ramp_s),
        "rss_mb_at_peak_queue": peak["rss_mb"],
        "fds_at_peak_queue": peak["fds"],
        "rss_mb_before": before,
        "rss_mb_max": max(s["rss_mb"] for s in sampler.samples),
        "rss_mb_after": after,
        "blockers_completed": sum(1 for e in blockers if e.complete),
        "outcome": outcome(exchanges, 1),
        "samples": sampler.samples,
    }


@contextlib.contextmanager
def fresh_stack(args) -> Iterator[Stack]:
    """A stack of its own for one phase: memory a phase leaves behind stays with the gateway process, so a
    phase run after another would measure both."""
    rate = (args.stream_tokens - 1) / args.hold_s
    with harness.cluster(
        "held",
        keep_logs=args.keep_logs,
        gateway_options=NO_LIMITS,
        max_concurrent=args.count,
        sim_args=("--tokens-per-s", f"{rate:.4f}", "--slots", str(args.count)),
    ) as stack:
        url = harness.start_vllm_node(
            stack,
            "queue-node",
            [QUEUE_MODEL],
            ["--tokens-per-s", str(QUEUE_NODE_TOKENS_PER_S), "--slots", "2"],
        )
        harness.register_vllm_node(stack, "sim-vllm-queue", url, [QUEUE_MODEL], 2)
        yield stack


async def run_all(args) -> dict:
    results: dict = {"machine": harness.machine(), "parameters": vars(args).copy()}
    results["fd_limit"] = harness.raise_fd_limit(8 * args.count + 4096)
    with fresh_stack(args) as stack:
        results["rss_mb_idle"] = harness.rss_mb(harness.gateway_pid(stack))
        results["queued"] = await queued_phase(stack, args)
    with fresh_stack(args) as stack:
        results["streams"] = await streams_phase(stack, args)
    return results


def report(results: dict) -> None:
    m, p = results["machine"], results["parameters"]
    print(
        f"held connections: {m['cpus']} CPUs shared by gateway, nodes and load generator ({m['cpu_model']}), "
        f"load average at start {m['load_average_at_start']:.1f}; descriptor limit {results['fd_limit']}"
    )
    s, q = results["streams"], results["queued"]
    rows = [
        [
            f"{s['requests']} streams ({s['tokens_per_stream']} tokens over ~{p['hold_s']:g} s)",
            s["ramp_s"],
            s["gateway_cpu_during_ramp"],
            s["peak_concurrent_streams"],
            s["rss_mb_before"],
            s["rss_mb_at_peak_streams"],
            s["rss_mb_max"],
            s["rss_mb_after"],
            s["fds_at_peak_streams"],
            s["outcome"]["with_all_tokens"],
            s["outcome"]["lost"],
        ],
        [
            f"{q['requests']} queued behind 2 slots busy {p['queue_hold_s']:g} s",
            q["ramp_s"],
            q["gateway_cpu_during_ramp"],
            q["peak_queued"],
            q["rss_mb_before"],
            q["rss_mb_at_peak_queue"],
            q["rss_mb_max"],
            q["rss_mb_after"],
            q["fds_at_peak_queue"],
            q["outcome"]["with_all_tokens"],
            q["outcome"]["lost"],
        ],
    ]
    print()
    print(
        table(
            f"gateway RSS (MiB; {results['rss_mb_idle']:.1f} when idle after start-up)",
            [
                "phase",
                "ramp s",
                "gateway CPU in ramp",
                "held at peak",
                "RSS before",
                "RSS at peak",
                "RSS max",
                "RSS after",
                "fds at peak",
                "answered",
                "lost",
            ],
            rows,
        )
    )
    for phase in (s, q):
        if phase["outcome"]["errors"]:
            print(f"  errors: {phase['outcome']['errors']}")
    checks = [
        (
            f"{s['requests']} concurrent streams held at once ({s['peak_concurrent_streams']})",
            s["all_open_at_once"],
        ),
        (
            f"RSS < {RSS_TARGET_MB} MB with the streams ({s['rss_mb_max']:.1f})",
            s["rss_mb_max"] < RSS_TARGET_MB,
        ),
        ("no stream lost", s["outcome"]["lost"] == 0),
        (f"{q['requests']} requests queued at once ({q['peak_queued']})", q["all_queued_at_once"]),
        (f"RSS < {RSS_TARGET_MB} MB with the queue ({q['rss_mb_max']:.1f})", q["rss_mb_max"] < RSS_TARGET_MB),
        ("no queued request lost", q["outcome"]["lost"] == 0 and q["blockers_completed"] == 2),
    ]
    report_checks(results, checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="requests held at once, in each phase")
    parser.add_argument(
        "--hold-s",
        type=float,
        default=150.0,
        help="how long each stream lasts, seconds (longer than the ramp)",
    )
    parser.add_argument(
        "--queue-hold-s", type=float, default=60.0, help="how long the 2 busy slots stay busy, seconds"
    )
    parser.add_argument("--stream-tokens", type=int, default=11, help="tokens in each stream")
    parser.add_argument(
        "--opening",
        type=int,
        default=32,
        help="requests on their way in (streams without headers, requests not yet queued) at a time",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    harness.run_and_report(run_all, report, args)


if __name__ == "__main__":
    main()
