"""How much one gateway process carries, beside the node called directly and a stock mitmdump, in one run.

Four ways to the same simulated vLLM node, measured one after the other under the same load:
`direct`; `stock mitmdump` (a plain reverse proxy, no addons: mitmproxy's own floor); the gateway as
shipped (`python -m addons`, uvloop); and the same gateway on Python's asyncio loop (`--asyncio-loop`),
which shows what uvloop gives. Non-streamed requests also take a fifth: the shipped gateway with
`upstream_keepalive_s=0` (a connection to the node per request), which shows what kept connections give.
The gateways run with the shipped defaults except the per-user limits,
switched off (one user makes all the requests); `--with-limits` keeps the shipped limits instead.

(a) streams at saturation: `--streams` clients, each opening its next stream of `--stream-tokens`
    tokens at `--stream-tokens-per-s` as soon as the last one ends: tokens/s delivered and the proxy's
    CPU per streamed token (its process's CPU time over the run, /proc, divided by the tokens).
(b) `--fast-streams` clients streaming from a node that writes its tokens as fast as it can: the most
    tokens/s one proxy process carries (the client and node share the machine with it).
(c) non-streamed at concurrency 1, 16 and 64 (closed loop, the node answers at once): requests/s, p50
    and p99 latency, the p50 added to direct, and the proxy's CPU per request, with the part of it spent
    by the gateway's store writer (the thread that writes the audit rows: on the embedded SQLite, the
    database's own work is the gateway's).

    PYTHONPATH=. .venv/bin/python bench/throughput.py [--seconds 10] [--json throughput.json] [--profile DIR]

`--profile DIR` also samples the shipped gateway with py-spy while it carries (a) and (c) at 16 clients:
where its CPU goes (`*-cpu.txt`) and who holds the GIL (`*-gil.txt`), as collapsed stacks.

The proxies, the node, the admin app and this load generator share the machine's CPUs: figures from a
busy machine are not comparable with figures from a quiet one (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import harness
from harness import NO_LIMITS, Service, Stack, auth, chat_body, free_port, table
from overhead import PACED_MODEL, closed_loop

from sim.stack import GATEWAY

SLOTS = 256
SHIPPED = "gateway (uvloop)"
STOCK_STREAMING = "stock mitmdump, streaming"
CONCURRENCIES = (1, 16, 64)
WRITER, WRITER_THREAD = "store writer", "mindrouter-store-writer"  # the thread that writes the audit rows


KEEPALIVE_OFF = "gateway, no kept connection"


def start_gateway(stack: Stack, name: str, options: tuple[str, ...], *flags: str) -> str:
    """One more gateway process on the same database; its URL."""
    port = free_port()
    gateway = Service(name, [*GATEWAY, *flags, "-p", str(port), *(arg for option in options for arg in ("--set", option))],
                      stack.env, stack.work_dir)  # type: ignore[attr-defined]
    stack.services.append(gateway)  # stopped first, before the nodes
    url = f"http://127.0.0.1:{port}"
    gateway.wait_http(f"{url}/healthz", accept=lambda response: response.status_code == 200)
    return url


def targets(stack: Stack, node_url: str, asyncio_url: str) -> list[tuple]:
    """(label, base URL, headers, the proxy's pid or None) for each way to the node."""
    key = auth(stack.keys["student1"])
    stock_url = harness.start_stock_mitmdump(stack, node_url)
    streaming_url = harness.start_stock_mitmdump(stack, node_url, streaming=True)
    return [
        ("direct", node_url, {}, None),
        ("stock mitmdump", stock_url, {}, stack.service("mitmdump-stock").process.pid),
        (STOCK_STREAMING, streaming_url, {}, stack.service("mitmdump-stock-streaming").process.pid),
        (SHIPPED, stack.gateway_url, key, harness.gateway_pid(stack)),
        ("gateway (asyncio)", asyncio_url, key, stack.service("gateway-asyncio").process.pid),
    ]


async def measure(ways: list[tuple], node_pid: int, body: dict, clients: int, seconds: float,
                  profile: Path | None = None) -> dict:
    results = {}
    for label, url, headers, proxy_pid in ways:
        pids = {"node": node_pid} | ({"proxy": proxy_pid} if proxy_pid else {})
        if label.startswith("gateway"):
            pids[WRITER] = (proxy_pid, harness.thread_id(proxy_pid, WRITER_THREAD))
        print(f"[throughput] {label}: {clients} clients, stream={body['stream']} ...", file=sys.stderr, flush=True)
        sampling = []
        if profile and label == SHIPPED:
            name = f"{'streams' if body['stream'] else 'requests'}-{clients}"
            sampling = [await asyncio.create_subprocess_exec(
                harness.PY_SPY, "record", "--pid", str(proxy_pid), "--duration", str(int(seconds)), "--format", "raw",
                "--nonblocking", *flags, "--output", str(profile / f"{name}-{kind}.txt"),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                for kind, flags in (("cpu", ()), ("gil", ("--gil",)))]
        results[label] = await closed_loop(None, f"{url}/v1/chat/completions", body, headers, clients, seconds, pids)
        for sampler in sampling:
            await sampler.wait()
    return results


async def run_all(args) -> dict:
    results: dict = {"machine": harness.machine(), "parameters": vars(args) | {"profile": str(args.profile or "")}}
    options = () if args.with_limits else NO_LIMITS
    with harness.cluster("throughput", gateway_options=options, max_concurrent=SLOTS,
                         sim_args=("--tokens-per-s", "0", "--slots", str(SLOTS))) as stack:
        paced_url = harness.start_vllm_node(stack, "paced-node", [PACED_MODEL],
                                            ["--tokens-per-s", str(args.stream_tokens_per_s), "--slots", str(SLOTS)])
        await asyncio.to_thread(harness.register_vllm_node, stack, "sim-vllm-paced", paced_url, [PACED_MODEL], SLOTS)
        asyncio_url = start_gateway(stack, "gateway-asyncio", options, "--asyncio-loop")
        paced_pid = stack.service("paced-node").process.pid
        streams = await measure(targets(stack, paced_url, asyncio_url),
                                paced_pid, chat_body(args.stream_tokens, stream=True, model=PACED_MODEL),
                                args.streams, args.seconds, args.profile)
        results["streams"] = {label: run | {"tokens_per_s": run["requests_per_s"] * run["chunks_per_request"]}
                              for label, run in streams.items()}
        node_pid = stack.service("vllm").process.pid
        ways = targets(stack, stack.vllm_url, asyncio_url)
        fast = await measure(ways, node_pid, chat_body(args.stream_tokens, stream=True), args.fast_streams, args.seconds)
        results["fast_streams"] = {label: run | {"tokens_per_s": run["requests_per_s"] * run["chunks_per_request"]}
                                   for label, run in fast.items()}
        no_keepalive_url = start_gateway(stack, "gateway-no-keepalive", (*options, "upstream_keepalive_s=0"))
        ways.append((KEEPALIVE_OFF, no_keepalive_url, auth(stack.keys["student1"]),
                     stack.service("gateway-no-keepalive").process.pid))
        results["non_streamed"] = {
            str(clients): await measure(ways, node_pid, chat_body(args.max_tokens, stream=False), clients, args.seconds,
                                        args.profile if clients == 16 else None)
            for clients in CONCURRENCIES
        }
    return results


def cpu_us(run: dict, per: float) -> float | None:
    cpu_ms = run["cpu_ms_per_request"].get("proxy")
    return None if cpu_ms is None or not per else 1000 * cpu_ms / per


def report(results: dict) -> None:
    m, p = results["machine"], results["parameters"]
    print(f"throughput: {m['cpus']} CPUs ({m['cpu_model']}) shared by proxies, nodes and load generator; "
          f"load average at start {m['load_average_at_start']:.1f}")
    titles = {"streams": f"(a) {p['streams']} streams of {p['stream_tokens']} tokens at {p['stream_tokens_per_s']}/s",
              "fast_streams": f"(b) {p['fast_streams']} streams of {p['stream_tokens']} tokens as fast as they come"}
    for part, title in titles.items():
        rows = [[label, run["tokens_per_s"], run["requests_per_s"], run["failed"],
                 cpu_us(run, run["chunks_per_request"]), 100 * run["cpu_share"].get("proxy", 0.0)]
                for label, run in results[part].items()]
        print(table(f"{title}, closed loop, {p['seconds']:.0f} s each",
                    ["way", "tokens/s", "streams/s", "failed", "proxy CPU µs/token", "proxy CPU %"], rows))
    for clients, ways in results["non_streamed"].items():
        direct_p50 = ways["direct"]["latency_ms"]["p50"]
        rows = [[label, run["requests_per_s"], run["latency_ms"]["p50"], run["latency_ms"]["p99"],
                 run["latency_ms"]["p50"] - direct_p50, run["failed"], run["cpu_ms_per_request"].get("proxy"),
                 run["cpu_ms_per_request"].get(WRITER)]
                for label, run in ways.items()]
        print(table(f"(c) non-streamed, {clients} clients, {p['max_tokens']} tokens each",
                    ["way", "req/s", "p50 ms", "p99 ms", "p50 added ms", "failed", "proxy CPU ms/req",
                     f"of which {WRITER}"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=48, help="concurrent streams in (a)")
    parser.add_argument("--stream-tokens", type=int, default=280, help="tokens in each stream")
    parser.add_argument("--stream-tokens-per-s", type=int, default=100, help="pacing of the streaming node")
    parser.add_argument("--fast-streams", type=int, default=16, help="concurrent streams in (b), from an unpaced node")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens in each non-streamed answer")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each closed-loop run")
    parser.add_argument("--with-limits", action="store_true", help="keep the shipped per-user limits on")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--profile", metavar="DIR", type=Path, help="also sample the shipped gateway with py-spy")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    harness.run_and_report(run_all, report, args)


if __name__ == "__main__":
    main()
