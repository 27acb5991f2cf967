"""What the gateway benchmarks share: a whole stack on free ports, process readings, tables, JSON.

Each benchmark starts its own stack (`tests.support.cluster.start_cluster`: the operator commands,
SQLite in a temporary directory, simulated nodes, admin app, gateway) and always stops it. Readings of
a process (CPU time, RSS, open descriptors) come from /proc, so no extra dependency is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` works with or without PYTHONPATH=.
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

from sim.stack import MITMDUMP, PYTHON, Service, Stack, free_port, wait_until  # noqa: E402
from tests.support.cluster import NO_LIMITS, start_cluster  # noqa: E402

CHAT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # served by the simulated vLLM node only
PROMPT = "Tell me about the river in the morning light."
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PY_SPY = str(Path(sys.executable).parent / "py-spy")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft descriptor limit (children inherit it); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def cluster(
    name: str,
    gateway_options: Sequence[str] = (),
    environment: dict[str, str] | None = None,
    keep_logs: bool = False,
    **stack_options,
) -> Iterator[Stack]:
    """A stack on free ports, its own SQLite database and logs in a temporary directory; stopped and
    removed on the way out (the logs are kept, and their place printed, if the benchmark failed)."""
    work_dir = Path(tempfile.mkdtemp(prefix=f"mindrouter-bench-{name}-"))
    print(f"[{name}] starting a stack (logs in {work_dir}) ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    failed = False
    for attempt in (1, 2):  # on a busy machine a process can miss its 30 s start-up deadline: once more
        try:
            stack = start_cluster(
                work_dir / f"try{attempt}",
                f"sqlite:///{work_dir / f'try{attempt}.db'}",
                tuple(gateway_options),
                environment,
                **stack_options,
            )
            break
        except TimeoutError as exc:
            if attempt == 2:
                print(f"[{name}] logs kept in {work_dir}", file=sys.stderr, flush=True)
                raise
            print(f"[{name}] start-up timed out ({exc}); trying once more", file=sys.stderr, flush=True)
    stack.work_dir = work_dir  # type: ignore[attr-defined]
    print(
        f"[{name}] stack up in {time.monotonic() - started:.0f} s: gateway {stack.gateway_url}",
        file=sys.stderr,
        flush=True,
    )
    try:
        yield stack
    except BaseException:
        failed = True
        raise
    finally:
        stack.stop()
        if failed or keep_logs:
            print(f"[{name}] logs kept in {work_dir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def start_vllm_node(stack: Stack, name: str, models: Sequence[str], sim_args: Sequence[str]) -> str:
    """Start one more simulated vLLM node serving `models`, stopped with the stack; its URL."""
    port = free_port()
    node = Service(
        name,
        [PYTHON, "-m", "sim", "vllm", "--port", str(port), "--models", ",".join(models), *sim_args],
        stack.env,
        stack.work_dir,
    )  # type: ignore[attr-defined]
    stack.services.insert(0, node)  # stopped last, after the gateway
    url = f"http://127.0.0.1:{port}"
    node.wait_http(f"{url}/health")
    return url


def register_vllm_node(stack: Stack, name: str, url: str, models: Sequence[str], max_concurrent: int) -> None:
    """Register a vLLM node through the admin API and wait until the gateway lists its models."""
    registered = httpx.post(
        f"{stack.gateway_url}/admin/backends/register",
        headers=auth(stack.keys["admin"]),
        timeout=10,
        json={
            "name": name,
            "url": url,
            "engine": "vllm",
            "max_concurrent": max_concurrent,
            "gpu_memory_gb": 24,
        },
    )
    registered.raise_for_status()

    def listed() -> bool:
        answer = httpx.get(f"{stack.gateway_url}/v1/models", headers=auth(stack.keys["admin"]), timeout=5)
        return all(model in {m["id"] for m in answer.json()["data"]} for model in models)

    wait_until(listed, 30, f"{name}'s models in /v1/models")


def start_stock_mitmdump(stack: Stack, target_url: str, streaming: bool = False) -> str:
    """A plain `mitmdump` reverse proxy (no addons of ours, same log settings as the gateway) in front of
    `target_url`: what mitmproxy alone costs on this machine. As shipped, mitmproxy reads a whole answer
    before it sends it on; `streaming` passes every body through as it comes (`stream_large_bodies=1`), as a
    proxy in front of an LLM must. Stopped with the stack; its URL."""
    port = free_port()
    proxy = Service(
        "mitmdump-stock-streaming" if streaming else "mitmdump-stock",
        [
            MITMDUMP,
            "--mode",
            f"reverse:{target_url}",
            "-p",
            str(port),
            "--set",
            "flow_detail=0",
            "--set",
            "keep_host_header=true",
            *(("--set", "stream_large_bodies=1") if streaming else ()),
        ],
        stack.env,
        stack.work_dir,
    )  # type: ignore[attr-defined]
    stack.services.insert(0, proxy)
    url = f"http://127.0.0.1:{port}"
    proxy.wait_http(f"{url}/health", accept=lambda response: response.status_code == 200)
    return url


def gateway_pid(stack: Stack) -> int:
    return stack.service("gateway").process.pid


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process, all its threads (or only its OS thread `thread`), in seconds."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


@functools.cache
def thread_id(pid: int, name: str) -> int:
    """The OS thread id of the Python thread called `name` in process `pid` (read by py-spy: Python 3.12
    does not give its threads' names to the OS)."""
    dump = subprocess.run([PY_SPY, "dump", "--pid", str(pid)], capture_output=True, text=True, check=True).stdout
    for line in dump.splitlines():
        if line.startswith("Thread ") and line.rstrip().endswith(f'"{name}"'):
            return int(line.split()[1])
    raise LookupError(f"no thread {name!r} in process {pid}")


def rss_mb(pid: int) -> float:
    """Resident set size in MiB."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE / 2**20


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def load_average() -> float:
    """The 1-minute load average: how busy the machine was besides the benchmark's own processes."""
    return os.getloadavg()[0]


def machine() -> dict:
    """What the figures were measured on: the whole stack and the load shared these cores."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    revision = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "revision": revision,
        "load_average_at_start": load_average(),
        "note": "gateway, admin app, simulated nodes and the load generator all share these CPUs",
    }


def table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[str(h) for h in header]] + [[format_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)] + [line(row) for row in cells[1:]]
    return "\n".join(out)


def format_cell(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def report_checks(results: dict, checks: list[tuple[str, bool]]) -> None:
    """Print the target checks as a table and keep them in the results (for --json)."""
    print()
    print(table("targets (DESIGN section 8)", ["check", "verdict"], [[text, verdict(ok)] for text, ok in checks]))
    results["checks"] = {text: ok for text, ok in checks}


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {path}", file=sys.stderr)


def run_and_report(
    run_all: Callable[[argparse.Namespace], Awaitable[dict]],
    report: Callable[[dict], None],
    args: argparse.Namespace,
) -> None:
    """Measure, print the tables, and write the JSON (`--json`) even if printing them fails."""
    results = asyncio.run(run_all(args))
    try:
        report(results)
    finally:
        write_json(args.json, results)


def chat_body(max_tokens: int, stream: bool, model: str = CHAT_MODEL, prompt: str = PROMPT) -> dict:
    """An OpenAI chat request whose answer is exactly `max_tokens` tokens (vLLM's `ignore_eos`)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


__all__ = ["NO_LIMITS", "Stack", "cluster"]
