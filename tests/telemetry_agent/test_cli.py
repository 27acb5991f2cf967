"""`python -m telemetry_agent` as an operator runs it on a node: no secret, no start; otherwise serve."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from telemetry_agent.__main__ import main

SECRET = "cli-test-secret-0123456789abcdef"


def environment(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "TELEMETRY_SECRET"}
    return env | extra


def refusal(monkeypatch, capsys, *args: str, **env: str) -> str:
    """Run the CLI in-process; it must exit 2 before listening. Returns what it said on stderr."""
    monkeypatch.delenv("TELEMETRY_SECRET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0", "--host", "127.0.0.1", *args])
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_the_agent_refuses_to_start_without_a_secret(monkeypatch, capsys):
    stderr = refusal(monkeypatch, capsys)
    assert "no shared secret in $TELEMETRY_SECRET" in stderr and "--secret-file" in stderr


def test_the_agent_refuses_an_empty_secret_from_a_named_variable(monkeypatch, capsys):
    assert "no shared secret in $NODE_SECRET" in refusal(
        monkeypatch, capsys, "--secret-env", "NODE_SECRET", NODE_SECRET=" "
    )


def test_the_agent_refuses_a_short_secret(monkeypatch, capsys):
    stderr = refusal(monkeypatch, capsys, "--secret-env", "NODE_SECRET", NODE_SECRET="hunter2")
    assert "has 7 characters; use at least 16" in stderr


def test_the_agent_refuses_a_secret_file_it_cannot_read(monkeypatch, capsys, tmp_path):
    assert "cannot read --secret-file" in refusal(
        monkeypatch, capsys, "--secret-file", str(tmp_path / "missing")
    )


def test_the_agent_serves_with_a_secret_file_and_stops_cleanly_on_sigterm(tmp_path):
    secret_file = tmp_path / "telemetry.secret"
    secret_file.write_text(SECRET + "\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telemetry_agent",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--secret-file",
            str(secret_file),
            "--node-name",
            "gpu-test",
        ],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"telemetry agent listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, f"unexpected ready line {line!r}"
        url = match[1]
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/gpus").status_code == 401
        response = httpx.get(f"{url}/gpus", headers={"Authorization": f"Bearer {SECRET}"})
        # 200 on a GPU node; 503 with the reason where there is no NVIDIA driver (CI, laptops).
        assert response.status_code in (200, 503)
        if response.status_code == 200:
            assert response.json()["node"] == "gpu-test"
        else:
            assert "NVML" in response.json()["error"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
