"""What the gateway adds to a request, measured against calling the simulated node directly.

Every figure is a comparison in the same run, on the same machine: the same request sent straight to
the simulated vLLM node and through the gateway, alternately, so that whatever else the machine is
doing weighs on both alike.

(a) latency, non-streamed, one client at a time (keep-alive): p50/p90/p99 direct, through the gateway,
    and their difference; OpenAI client → vLLM node (same dialect) and Ollama client → vLLM node
    (`/api/chat` translated to the node's OpenAI dialect and back). The node answers at once
    (`--tokens-per-s 0`), so the figures are the HTTP round trips and the gateway's own work.
(b) streaming, one client at a time, from a node that paces its tokens (`--stream-tokens-per-s`, one
    SSE event per token): time to first byte and the gap between consecutive chunks, direct and through
    the gateway; and how late each chunk arrives through the gateway compared with direct, relative to
    the stream's first chunk (0 when nothing is buffered).
(c) CPU per proxied request: the gateway process's CPU time (all threads, /proc) over a closed-loop
    run of N clients, divided by the requests it served; throughput direct and through the gateway;
    non-streamed requests and paced streams (CPU per chunk too).

    PYTHONPATH=. .venv/bin/python bench/overhead.py [--samples 400] [--clients 8] [--json overhead.json]

The gateway, the admin app, the simulated nodes and this load generator share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
import harness
from harness import (
    CHAT_MODEL,
    NO_LIMITS,
    PROMPT,
    Stack,
    auth,
    chat_body,
    report_checks,
    summary,
    table,
)
from streams import Exchange, connector, post

PACED_MODEL = "bench/paced-0.5B"  # one more simulated vLLM node, paced, for the streaming figures
SLOTS = 64


class Tap:
    """A TCP relay in front of the paced node that notes when each event carrying generated text leaves
    the node: a chunk's transit to the client is then its arrival minus that time, direct or through the
    gateway. Both paths go through the tap, so it adds the same hop to both."""

    def __init__(self, node_url: str):
        self.node_port = int(node_url.rsplit(":", 1)[1])
        self.events: list[float] = []
        self.recording = False
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Tap:
        self.server = await asyncio.start_server(self.connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        if self.server:
            self.server.close()

    async def connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            node_reader, node_writer = await asyncio.open_connection("127.0.0.1", self.node_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                self.pipe(client_reader, node_writer, watch=False),
                self.pipe(node_reader, client_writer, watch=True),
                return_exceptions=True,
            )
        except asyncio.CancelledError:  # the benchmark is over and the loop closes: nothing to report
            node_writer.close()
            client_writer.close()

    async def pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, watch: bool) -> None:
        pending = b""
        try:
            while data := await source.read(65536):
                if watch:
                    now = time.perf_counter()
                    *events, pending = (pending + data).split(b"\n\n")
                    if self.recording:
                        self.events += [
                            now
                            for event in events
                            if b'"content": "' in event and b'"content": ""' not in event
                        ]
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()


def ollama_body(max_tokens: int, stream: bool, model: str = CHAT_MODEL) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
        "options": {"num_predict": max_tokens},
    }


def openai_direct_body(max_tokens: int, stream: bool, model: str = CHAT_MODEL) -> dict:
    """What the gateway sends the node for `ollama_body` (no ignore_eos: the Ollama dialect has none)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class Paths:
    """Keep-alive sessions of one connection each: to the node, to the gateway, to a stock mitmdump."""

    def __init__(self, stack: Stack, node_url: str, stock_url: str = ""):
        self.stack, self.node_url, self.stock_url = stack, node_url, stock_url
        self.key = stack.keys["student1"]
        timeout = aiohttp.ClientTimeout(total=120)
        self.direct = aiohttp.ClientSession(connector=connector(limit=1), timeout=timeout)
        self.gateway = aiohttp.ClientSession(connector=connector(limit=1), timeout=timeout)
        self.stock = aiohttp.ClientSession(connector=connector(limit=1), timeout=timeout)

    async def close(self) -> None:
        await self.direct.close()
        await self.gateway.close()
        await self.stock.close()

    async def round(
        self, gateway_path: str, gateway_body: dict, direct_body: dict, order: int, stock: bool
    ) -> dict[str, Exchange]:
        """The same request direct, through the gateway (and through a stock mitmdump), in rotating order."""
        sends = {
            "direct": lambda: post(self.direct, f"{self.node_url}/v1/chat/completions", direct_body, {}),
            "gateway": lambda: post(
                self.gateway, f"{self.stack.gateway_url}{gateway_path}", gateway_body, auth(self.key)
            ),
        }
        if stock:
            sends["stock"] = lambda: post(
                self.stock, f"{self.stock_url}/v1/chat/completions", direct_body, {}
            )
        names = list(sends)
        names = names[order % len(names) :] + names[: order % len(names)]
        done = {name: await sends[name]() for name in names}
        for exchange in done.values():
            if not exchange.complete:
                raise RuntimeError(f"request failed: {exchange.status} {exchange.error}")
        return done


def ms(values) -> list[float]:
    return [1000 * v for v in values]


def compare(direct: list[float], gateway: list[float]) -> dict:
    """Percentiles direct and through the gateway (ms) and the difference of each percentile."""
    d, g = summary(direct), summary(gateway)
    return {
        "direct_ms": d,
        "gateway_ms": g,
        "added_ms": {p: g[p] - d[p] for p in ("p50", "p90", "p99", "mean")},
    }


async def latency(stack: Stack, stock_url: str, args) -> dict:
    paths = Paths(stack, stack.vllm_url, stock_url)
    cases = {
        "OpenAI client → vLLM node": (
            "/v1/chat/completions",
            chat_body(args.max_tokens, stream=False),
            chat_body(args.max_tokens, stream=False),
        ),
        "Ollama client → vLLM node": (
            "/api/chat",
            ollama_body(args.max_tokens, stream=False),
            openai_direct_body(args.max_tokens, stream=False),
        ),
    }
    results = {}
    try:
        for label, (path, gateway_body, direct_body) in cases.items():
            stock = label.startswith("OpenAI")  # a stock mitmdump cannot translate dialects
            print(f"[overhead] latency, {label}: {args.samples} rounds ...", file=sys.stderr, flush=True)
            for n in range(20):  # warm every path (the key's first check, connections, caches)
                await paths.round(path, gateway_body, direct_body, n, stock)
            times: dict[str, list[float]] = {"direct": [], "gateway": [], "stock": []}
            for n in range(args.samples):
                for name, exchange in (await paths.round(path, gateway_body, direct_body, n, stock)).items():
                    times[name].append(exchange.end - exchange.sent)
            results[label] = compare(ms(times["direct"]), ms(times["gateway"]))
            if stock:
                results[label]["stock_mitmdump"] = compare(ms(times["direct"]), ms(times["stock"]))
            results[label]["load_average"] = harness.load_average()
    finally:
        await paths.close()
    return results


def inter_arrival(exchange: Exchange) -> list[float]:
    """Gaps between consecutive events that carry generated text."""
    times = exchange.token_times
    return [b - a for a, b in zip(times, times[1:])]


async def streaming(stack: Stack, tap: Tap, args) -> dict:
    """Both paths reach the paced node through the tap; the gateway knows the node by the tap's URL."""
    paths = Paths(stack, tap.url)
    tokens = args.stream_tokens
    cases = {
        "OpenAI client → vLLM node": (
            "/v1/chat/completions",
            chat_body(tokens, stream=True, model=PACED_MODEL),
            chat_body(tokens, stream=True, model=PACED_MODEL),
        ),
        "Ollama client → vLLM node": (
            "/api/chat",
            ollama_body(tokens, stream=True, model=PACED_MODEL),
            openai_direct_body(tokens, stream=True, model=PACED_MODEL),
        ),
    }
    results = {}

    async def tapped(send) -> tuple[Exchange, list[float]]:
        tap.events.clear()
        tap.recording = True
        exchange = await send()
        tap.recording = False
        if not exchange.complete:
            raise RuntimeError(f"request failed: {exchange.status} {exchange.error}")
        return exchange, list(tap.events)

    try:
        for label, (path, gateway_body, direct_body) in cases.items():
            print(
                f"[overhead] streaming, {label}: {args.stream_samples} pairs ...", file=sys.stderr, flush=True
            )

            def direct(body=direct_body):
                return post(paths.direct, f"{tap.url}/v1/chat/completions", body, {}, keep_chunk_times=True)

            def through(path=path, body=gateway_body):
                return post(
                    paths.gateway, f"{stack.gateway_url}{path}", body, auth(paths.key), keep_chunk_times=True
                )

            ttfb_d, ttfb_g, gaps_d, gaps_g, transit_d, transit_g = [], [], [], [], [], []
            chunks_d = chunks_g = 0
            for n in range(-5, args.stream_samples):  # the first 5 warm up
                first, second = (through, direct) if n % 2 else (direct, through)
                a, a_node = await tapped(first)
                b, b_node = await tapped(second)
                (d, d_node), (g, g_node) = ((b, b_node), (a, a_node)) if n % 2 else ((a, a_node), (b, b_node))
                if n < 0:
                    continue
                ttfb_d.append(d.first_chunk - d.sent)
                ttfb_g.append(g.first_chunk - g.sent)
                gaps_d += inter_arrival(d)
                gaps_g += inter_arrival(g)
                chunks_d += len(d.token_times)
                chunks_g += len(g.token_times)
                transit_d += [arrived - left for arrived, left in zip(d.token_times, d_node)]
                transit_g += [arrived - left for arrived, left in zip(g.token_times, g_node)]
            results[label] = {
                "time_to_first_byte": compare(ms(ttfb_d), ms(ttfb_g)),
                "inter_arrival": compare(ms(gaps_d), ms(gaps_g)),
                "chunk_transit_from_node": compare(ms(transit_d), ms(transit_g)),
                "text_chunks_per_stream": {
                    "direct": chunks_d / args.stream_samples,
                    "gateway": chunks_g / args.stream_samples,
                },
                "load_average": harness.load_average(),
            }
    finally:
        await paths.close()
    return results


def cpu_seconds(source: int | tuple[int, int]) -> float:
    return harness.cpu_seconds(*source) if isinstance(source, tuple) else harness.cpu_seconds(source)


async def closed_loop(
    stack: Stack, url: str, body: dict, headers: dict, clients: int, seconds: float,
    pids: dict[str, int | tuple[int, int]],
) -> dict:
    """`clients` clients, each sending its next request as soon as the last one is answered; the CPU of each
    of `pids` (a process, or a (process, OS thread) pair) is measured over the run."""
    exchanges: list[Exchange] = []
    stop = False
    async with aiohttp.ClientSession(
        connector=connector(), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def client() -> None:
            while not stop:
                exchanges.append(await post(session, url, body, headers))

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        await asyncio.sleep(1.0)  # warm-up: connections open, everyone busy
        counted_from = len(exchanges)
        cpu_before = {name: cpu_seconds(source) for name, source in pids.items()}
        own_before, started = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu_after = {name: cpu_seconds(source) for name, source in pids.items()}
        own_after, ended = time.process_time(), time.perf_counter()
        counted = exchanges[counted_from:]
        stop = True
        await asyncio.gather(*tasks)
    elapsed = ended - started
    done = [e for e in counted if e.complete]
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(done),
        "failed": sum(1 for e in counted if not e.complete),
        "requests_per_s": len(done) / elapsed,
        "latency_ms": summary(ms([e.end - e.sent for e in done])),
        "chunks_per_request": statistics.fmean(e.chunks for e in done) if done and body.get("stream") else 0,
        "cpu_share": {name: (cpu_after[name] - cpu_before[name]) / elapsed for name in pids}
        | {"load generator": (own_after - own_before) / elapsed},
        "cpu_ms_per_request": {
            name: 1000 * (cpu_after[name] - cpu_before[name]) / max(1, len(done)) for name in pids
        },
        "load_average": harness.load_average(),
    }


async def cpu_per_request(stack: Stack, paced_url: str, stock_url: str, args) -> dict:
    gateway_pid = harness.gateway_pid(stack)
    key = auth(stack.keys["student1"])
    results = {}
    cases = [
        ("non-streamed", stack.vllm_url, "vllm", chat_body(args.max_tokens, stream=False)),
        (
            f"streamed, {args.stream_tokens} tokens at {args.stream_tokens_per_s}/s",
            paced_url,
            "paced-node",
            chat_body(args.stream_tokens, stream=True, model=PACED_MODEL),
        ),
    ]
    for label, node_url, node_name, body in cases:
        node_pid = next(
            s.process.pid
            for s in stack.services
            if s.name == node_name or (node_name == "vllm" and s.name == "vllm")
        )
        print(f"[overhead] closed loop, {label}, {args.clients} clients ...", file=sys.stderr, flush=True)
        direct = await closed_loop(
            stack, f"{node_url}/v1/chat/completions", body, {}, args.clients, args.seconds, {"node": node_pid}
        )
        through = await closed_loop(
            stack,
            f"{stack.gateway_url}/v1/chat/completions",
            body,
            key,
            args.clients,
            args.seconds,
            {"gateway": gateway_pid, "node": node_pid},
        )
        results[label] = {
            "direct": direct,
            "gateway": through,
            "throughput_ratio": through["requests_per_s"] / direct["requests_per_s"],
        }
        if node_name == "vllm":  # the same load through a stock mitmdump: what mitmproxy alone costs here
            stock_pid = stack.service("mitmdump-stock").process.pid
            stock = await closed_loop(
                stack,
                f"{stock_url}/v1/chat/completions",
                body,
                {},
                args.clients,
                args.seconds,
                {"gateway": stock_pid, "node": node_pid},
            )
            results[label]["stock_mitmdump"] = stock
    return results


async def run_all(args) -> dict:
    results: dict = {"machine": harness.machine(), "parameters": vars(args).copy()}
    options = NO_LIMITS
    with harness.cluster(
        "overhead",
        gateway_options=options,
        max_concurrent=SLOTS,
        sim_args=("--tokens-per-s", "0", "--slots", str(SLOTS)),
    ) as stack:
        tap = await Tap(
            harness.start_vllm_node(
                stack,
                "paced-node",
                [PACED_MODEL],
                ["--tokens-per-s", str(args.stream_tokens_per_s), "--slots", str(SLOTS)],
            )
        ).start()
        try:
            await asyncio.to_thread(
                harness.register_vllm_node, stack, "sim-vllm-paced", tap.url, [PACED_MODEL], SLOTS
            )
            stock_url = harness.start_stock_mitmdump(stack, stack.vllm_url)
            results["latency"] = await latency(stack, stock_url, args)
            results["streaming"] = await streaming(stack, tap, args)
            results["closed_loop"] = await cpu_per_request(stack, tap.url, stock_url, args)
        finally:
            await tap.close()
        results["gateway_rss_mb_at_end"] = harness.rss_mb(harness.gateway_pid(stack))
    return results


def report(results: dict) -> None:
    m, p = results["machine"], results["parameters"]
    print(
        f"overhead vs direct: {m['cpus']} CPUs shared by gateway, admin app, nodes and load generator "
        f"({m['cpu_model']}), load average at start {m['load_average_at_start']:.1f}"
    )
    checks = []
    rows = []
    for label, r in results["latency"].items():
        stock = r.get("stock_mitmdump")
        for p_ in ("p50", "p90", "p99"):
            rows.append(
                [
                    label if p_ == "p50" else "",
                    p_,
                    r["direct_ms"][p_],
                    r["gateway_ms"][p_],
                    r["added_ms"][p_],
                    r["gateway_ms"][p_] / r["direct_ms"][p_],
                    stock["gateway_ms"][p_] if stock else float("nan"),
                    stock["added_ms"][p_] if stock else float("nan"),
                ]
            )
        checks.append(
            (
                f"added latency p50, lone client, {label}: {r['added_ms']['p50']:.2f} ms ≤ 1 ms",
                r["added_ms"]["p50"] <= 1.0,
            )
        )
    print()
    print(
        table(
            f"(a) non-streamed latency, one client, {p['samples']} rounds, answers of {p['max_tokens']} tokens "
            "(node unpaced); stock = a plain mitmdump reverse proxy, same machine, same rounds",
            ["path", "", "direct ms", "gateway ms", "added ms", "ratio", "stock ms", "stock added ms"],
            rows,
        )
    )
    rows = []
    for label, r in results["streaming"].items():
        t, g, late = r["time_to_first_byte"], r["inter_arrival"], r["chunk_transit_from_node"]
        path = label  # named on its first row only
        for name, measured in (("first byte", t), ("chunk gap", g), ("chunk transit from node", late)):
            for rank in ("p50", "p99"):
                row = [measured[side][rank] for side in ("direct_ms", "gateway_ms", "added_ms")]
                rows.append([path, f"{name} {rank}", *row])
                path = ""
        checks.append(
            (
                f"streaming first byte added p50, {label}: {t['added_ms']['p50']:.2f} ms ≤ 10 ms",
                t["added_ms"]["p50"] <= 10.0,
            )
        )
        per_chunk = late["added_ms"]["p50"]
        checks.append((f"per chunk added p50, {label}: {per_chunk:.2f} ms ≤ 1 ms", per_chunk <= 1.0))
    print()
    print(
        table(
            f"(b) streaming, one client, {p['stream_samples']} pairs of {p['stream_tokens']}-token streams at "
            f"{p['stream_tokens_per_s']} tokens/s",
            ["path", "", "direct ms", "gateway ms", "added ms"],
            rows,
        )
    )
    rows = []
    for label, r in results["closed_loop"].items():
        d, g = r["direct"], r["gateway"]
        chunks = g["chunks_per_request"]
        rows.append(
            [
                label,
                d["requests_per_s"],
                g["requests_per_s"],
                r["throughput_ratio"],
                g["cpu_ms_per_request"]["gateway"],
                g["cpu_ms_per_request"]["gateway"] / chunks if chunks else float("nan"),
                g["cpu_share"]["gateway"],
                g["cpu_share"]["node"],
                g["cpu_share"]["load generator"],
                d["latency_ms"]["p50"],
                g["latency_ms"]["p50"],
                d["failed"] + g["failed"],
            ]
        )
        if "stock_mitmdump" in r:
            st = r["stock_mitmdump"]
            rows.append(
                [
                    f"{label}, stock mitmdump",
                    d["requests_per_s"],
                    st["requests_per_s"],
                    st["requests_per_s"] / d["requests_per_s"],
                    st["cpu_ms_per_request"]["gateway"],
                    float("nan"),
                    st["cpu_share"]["gateway"],
                    st["cpu_share"]["node"],
                    st["cpu_share"]["load generator"],
                    d["latency_ms"]["p50"],
                    st["latency_ms"]["p50"],
                    st["failed"],
                ]
            )
        if label == "non-streamed":
            checks.append(
                (
                    f"CPU per proxied request: {g['cpu_ms_per_request']['gateway']:.2f} ms ≤ 1 ms",
                    g["cpu_ms_per_request"]["gateway"] <= 1.0,
                )
            )
    print()
    print(
        table(
            f"(c) closed loop, {p['clients']} clients, {p['seconds']:g} s each way",
            [
                "requests",
                "direct req/s",
                "proxied req/s",
                "ratio",
                "proxy CPU ms/req",
                "CPU ms/chunk",
                "proxy CPU",
                "node CPU",
                "client CPU",
                "direct p50 ms",
                "proxied p50 ms",
                "failed",
            ],
            rows,
        )
    )
    report_checks(results, checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400, help="request pairs per dialect for (a)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens in each non-streamed answer")
    parser.add_argument("--stream-samples", type=int, default=60, help="stream pairs per dialect for (b)")
    parser.add_argument("--stream-tokens", type=int, default=50, help="tokens in each stream")
    parser.add_argument("--stream-tokens-per-s", type=int, default=200, help="pacing of the streaming node")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients for (c)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each closed-loop run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    harness.run_and_report(run_all, report, args)


if __name__ == "__main__":
    main()
