"""`python -m sim` as operators and other test suites run it: a ready line, request logs, clean shutdown."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx


def launch(*args: str) -> tuple[subprocess.Popen, str, float]:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "sim", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    match = re.fullmatch(r"sim (\w+) listening on (http://127\.0\.0\.1:\d+)\n", line)
    assert match, f"unexpected ready line {line!r}"
    return process, match[2], time.monotonic() - started


def test_node_prints_its_url_when_ready_serves_logs_and_stops_cleanly_on_sigterm():
    process, url, ready_after = launch("vllm", "--port", "0", "--models", "a,b", "--slots", "2")
    try:
        assert ready_after < 5  # well under a second on an idle machine
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["a", "b"]
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert re.search(r"INFO sim vllm #\d+ GET /v1/models -> 200", stderr)
    assert re.search(r"INFO sim vllm #\d+ GET /health -> 200", stderr)


def test_sigint_stops_an_ollama_node_too():
    process, url, _ = launch("ollama", "--models", "llama3.2", "--max-loaded", "1", "--load-ms", "5")
    assert httpx.get(f"{url}/api/tags").json()["models"][0]["name"] == "llama3.2:latest"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=10)
    assert process.returncode == 0


def test_bad_arguments_are_refused_with_usage():
    result = subprocess.run(
        [sys.executable, "-m", "sim", "vllm", "--models", "a", "--slots", "0"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 2 and "--slots" in result.stderr
