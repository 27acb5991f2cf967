"""The gateway process itself: start-up checks, mitmproxy.conf, key revocation, slot limits, secrets at rest.
The start-up checks hold for both ways to run it: the lean launcher and mitmdump with the script."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import migrations
from addons.splice import dechunk
from sim.stack import GATEWAY, MITMDUMP, PYTHON, REPO_ROOT, Service, free_port, wait_until
from store import init_database
from store.models import ApiKey, User

LAUNCHERS = pytest.mark.parametrize("launcher", [GATEWAY, [MITMDUMP, "-s", "addons/mindrouter.py"]],
                                    ids=["python -m addons", "mitmdump -s"])


def start_refused(launcher: list[str], database_url: str, *arguments: str) -> subprocess.CompletedProcess:
    """Start a gateway that must refuse to start: its exit, with what it printed."""
    return subprocess.run([*launcher, "-p", str(free_port()), *arguments], cwd=REPO_ROOT, timeout=60,
                          env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def migrated(tmp_path) -> str:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrations.upgrade(init_database(db_url))
    return db_url


@LAUNCHERS
def test_gateway_refuses_an_out_of_date_schema(tmp_path, launcher):
    done = start_refused(launcher, f"sqlite:///{tmp_path / 'empty.db'}")
    assert done.returncode != 0
    assert "flask --app admin_app db upgrade" in done.stderr


@LAUNCHERS
def test_gateway_rejects_unknown_options(tmp_path, launcher):
    done = start_refused(launcher, migrated(tmp_path), "--set", "gate_max_wiat_s=3")
    assert done.returncode != 0
    assert "gate_max_wiat_s" in done.stdout + done.stderr


@LAUNCHERS
def test_gateway_refuses_an_invalid_option_value(tmp_path, launcher):
    """Each addon checks its options in `configure`; a value given on the command line is checked too."""
    done = start_refused(launcher, migrated(tmp_path), "--set", "scheduler_quantum=-1")
    assert done.returncode != 0
    assert "quantum" in done.stdout + done.stderr


@LAUNCHERS
def test_gateway_refuses_an_option_set_twice_instead_of_hanging(tmp_path, launcher):
    done = start_refused(launcher, migrated(tmp_path), "--set", "scheduler_max_wait_s=3", "--set", "scheduler_max_wait_s=4")
    assert done.returncode == 2
    assert "options set more than once: scheduler_max_wait_s" in done.stderr


@LAUNCHERS
def test_gateway_applies_mitmproxy_conf_and_the_command_line_wins(tmp_path, launcher):
    db_url = migrated(tmp_path)
    conf = tmp_path / "gateway.conf"
    port_in_file, port_on_command_line = free_port(), free_port()
    conf.write_text((REPO_ROOT / "mitmproxy.conf").read_text().replace("listen_port: 8000", f"listen_port: {port_in_file}"))
    for args, port in (([], port_in_file), (["-p", str(port_on_command_line)], port_on_command_line)):
        gateway = Service("gateway", [*launcher, "--set", f"mindrouter_conf={conf}", *args],
                          {"DATABASE_URL": db_url}, tmp_path)
        try:
            gateway.wait_http(f"http://127.0.0.1:{port}/healthz", accept=lambda r: r.status_code == 200)
            # Reverse mode: an origin-form request is ours to route, so an unknown API path is a 404 in dialect.
            assert httpx.get(f"http://127.0.0.1:{port}/api/nope").json() == {"error": "unknown endpoint /api/nope"}
        finally:
            gateway.stop()


@LAUNCHERS
def test_a_burst_of_connections_while_the_gateway_is_busy_waits_to_be_accepted(tmp_path, launcher):
    """300 connections arrive while the gateway's event loop is stopped (as when it is busy): the kernel
    holds them all for it (`listen_backlog`), where asyncio's own backlog of 100 would drop the rest,
    and each is answered once the gateway runs again."""
    port = free_port()
    gateway = Service("gateway", [*launcher, "-p", str(port)], {"DATABASE_URL": migrated(tmp_path)}, tmp_path)
    try:
        gateway.wait_http(f"http://127.0.0.1:{port}/healthz", accept=lambda r: r.status_code == 200)

        async def burst() -> list[bytes]:
            connections = await asyncio.gather(
                *(asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5) for _ in range(300)))
            gateway.process.send_signal(signal.SIGCONT)
            for _, writer in connections:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            return await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in connections)), 60)

        gateway.process.send_signal(signal.SIGSTOP)
        try:
            answers = asyncio.run(burst())
        finally:
            gateway.process.send_signal(signal.SIGCONT)
        assert [answer.split(b"\r\n", 1)[0] for answer in answers] == [b"HTTP/1.1 200 OK"] * 300
    finally:
        gateway.stop()


@pytest.mark.parametrize(("flags", "optimized"), [((), True), (("--debug-checks",), False)],
                         ids=["shipped", "--debug-checks"])
def test_the_lean_launcher_runs_itself_under_python_O_unless_asked_for_debug_checks(tmp_path, flags, optimized):
    """Started as `python -m addons`, the gateway runs again under `-O` in the same process (the pid a
    supervisor started is the one that serves), without mitmproxy's debug-only checks; `--debug-checks`
    keeps them, and is not passed on to mitmproxy's command line."""
    port = free_port()
    gateway = Service("gateway", [*GATEWAY, *flags, "-p", str(port)], {"DATABASE_URL": migrated(tmp_path)}, tmp_path)
    try:
        gateway.wait_http(f"http://127.0.0.1:{port}/healthz", accept=lambda r: r.status_code == 200)
        command_line = open(f"/proc/{gateway.process.pid}/cmdline", "rb").read().split(b"\0")
        assert ("-O" in [part.decode() for part in command_line]) is optimized
        assert command_line[-3:-1] == [b"-p", str(port).encode()]
    finally:
        gateway.stop()


def test_keys_are_not_stored_in_plaintext(cluster):
    database_file = cluster.env["DATABASE_URL"].removeprefix("sqlite:///")
    raw = open(database_file, "rb").read() + open(database_file + "-wal", "rb").read()
    connection = sqlite3.connect(database_file)
    rows = [row for table in ("api_key", "user", "admin_action") for row in connection.execute(f"SELECT * FROM {table}")]
    connection.close()
    for key in cluster.keys.values():
        secret = key.split("_", 2)[2]
        assert secret.encode() not in raw
        assert not any(secret in str(value) for row in rows for value in row)


def test_revoked_key_and_disabled_user_stop_working_within_5_s(cluster):
    url = f"{cluster.gateway_url}/api/tags"
    db = init_database(cluster.env["DATABASE_URL"])
    for revoke in (
        lambda key: ApiKey.update(status="revoked").where(ApiKey.prefix == key.split("_")[1]).execute(),
        lambda key: User.update(active=False).where(User.username == "staff1").execute(),
    ):
        key = cluster.new_key("staff1", "to be revoked")
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(url, headers=headers).status_code == 200
        revoke(key)
        revoked_at = time.monotonic()
        wait_until(lambda h=headers: httpx.get(url, headers=h).status_code == 401, 10, "the key to be refused")
        assert time.monotonic() - revoked_at <= 5
        User.update(active=True).where(User.username == "staff1").execute()
    db.close()


@pytest.fixture
def limited_backend(cluster, tmp_path):
    """One more node, with 8 slots of its own, registered with max_concurrent 2 under a model only it serves."""
    port = free_port()
    node = Service("ollama-limited", [PYTHON, "-m", "sim", "ollama", "--port", str(port), "--models", "tinyllama",
                                      "--slots", "8", "--tokens-per-s", "50"], {}, tmp_path)
    node.wait_http(f"http://127.0.0.1:{port}/api/version")
    admin = {"Authorization": f"Bearer {cluster.keys['admin']}"}
    registered = httpx.post(f"{cluster.gateway_url}/admin/backends/register", headers=admin, json={
        "name": f"limited-{port}", "url": f"http://127.0.0.1:{port}", "engine": "ollama", "max_concurrent": 2})
    assert registered.status_code == 201, registered.text
    wait_until(lambda: "tinyllama:latest" in httpx.get(f"{cluster.gateway_url}/api/tags", headers=admin).text,
               15, "the new backend's model in /api/tags")
    yield f"http://127.0.0.1:{port}"
    httpx.post(f"{cluster.gateway_url}/admin/backends/{registered.json()['id']}/disable", headers=admin)
    # Gone from the catalog before the node stops: the next test's node is then the only one with the model.
    wait_until(lambda: "tinyllama:latest" not in httpx.get(f"{cluster.gateway_url}/api/tags", headers=admin).text,
               15, "the disabled backend's model gone from /api/tags")
    node.stop()


def test_a_backend_never_runs_more_than_its_max_concurrent(cluster, limited_backend):
    headers = {"Authorization": f"Bearer {cluster.keys['faculty1']}"}
    body = {"model": "tinyllama", "prompt": "tell me a long story", "stream": True}
    peak = 0

    async def one_request(client: httpx.AsyncClient) -> int:
        async with client.stream("POST", f"{cluster.gateway_url}/api/generate", json=body, headers=headers) as response:
            lines = [line async for line in response.aiter_lines()]
        assert response.status_code == 200 and '"done": true' in lines[-1].replace('"done":true', '"done": true')
        return len(lines)

    async def watch_node(stop: asyncio.Event) -> None:
        nonlocal peak
        async with httpx.AsyncClient() as client:
            while not stop.is_set():
                stats = (await client.get(f"{limited_backend}/_sim/stats")).json()
                peak = max(peak, stats["running"] + stats["waiting"])
                await asyncio.sleep(0.01)

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_node(stop))
        async with httpx.AsyncClient(timeout=60) as client:
            results = await asyncio.gather(*(one_request(client) for _ in range(8)))
        stop.set()
        await watcher
        return results

    results = asyncio.run(scenario())
    assert len(results) == 8 and all(count > 2 for count in results)
    assert peak == 2  # the node had room for 8; the gateway held the rest back


def test_whole_answers_from_one_backend_go_on_one_kept_connection(cluster, limited_backend):
    """The gateway keeps its connection to a backend between whole answers: of six answered one after
    another by the one node that serves the model, only the first opens a connection."""
    headers = {"Authorization": f"Bearer {cluster.keys['faculty1']}"}
    body = {"model": "tinyllama", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
    before = counts_by_label(cluster, "mindrouter_backend_connections_total", "connection")
    for _ in range(6):
        answer = httpx.post(f"{cluster.gateway_url}/api/generate", json=body, headers=headers, timeout=10)
        assert answer.status_code == 200 and answer.json()["done"] is True and answer.json()["eval_count"] == 3
    after = counts_by_label(cluster, "mindrouter_backend_connections_total", "connection")
    assert {kind: after.get(kind, 0.0) - before.get(kind, 0.0) for kind in ("new", "kept", "stale")} == {
        "new": 1, "kept": 5, "stale": 0}


def test_a_caller_that_keeps_its_connection_streams_again_and_again(cluster):
    """Each stream reaches mitmproxy through a relay connection that ends with its answer. mitmproxy opens at
    most five connections to one address for one caller at a time, so unless it closes its side of each
    relay connection, a caller that keeps its connection waits for ever from its sixth stream on."""
    headers = {"Authorization": f"Bearer {cluster.keys['faculty1']}"}
    body = {"model": "llama3.2", "prompt": "a short story", "stream": True, "options": {"num_predict": 4}}
    caller_ports = set()
    straight_before = streams_written_straight(cluster)
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=1)) as client:
        for _ in range(8):
            with client.stream("POST", f"{cluster.gateway_url}/api/generate", json=body, headers=headers) as response:
                lines = list(response.iter_lines())
                caller_ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
            assert response.status_code == 200 and [json.loads(line)["response"] for line in lines[:-1]] != []
            assert json.loads(lines[-1])["done"] is True
    assert len(caller_ports) == 1  # one connection carried all eight: the relay's close did not close it
    assert streams_written_straight(cluster) == straight_before + 8  # past the relay, on the caller's connection


@pytest.fixture
def unpaced_backend(cluster, tmp_path):
    """One more vLLM node that writes its tokens as fast as it can, under a model only it serves."""
    port = free_port()
    node = Service("vllm-unpaced", [PYTHON, "-m", "sim", "vllm", "--port", str(port), "--models", "fast-qwen",
                                    "--tokens-per-s", "0"], {}, tmp_path)
    node.wait_http(f"http://127.0.0.1:{port}/v1/models")
    admin = {"Authorization": f"Bearer {cluster.keys['admin']}"}
    registered = httpx.post(f"{cluster.gateway_url}/admin/backends/register", headers=admin, json={
        "name": f"unpaced-{port}", "url": f"http://127.0.0.1:{port}", "engine": "vllm", "max_concurrent": 4})
    assert registered.status_code == 201, registered.text
    wait_until(lambda: "fast-qwen" in httpx.get(f"{cluster.gateway_url}/v1/models", headers=admin).text,
               15, "the new backend's model in /v1/models")
    yield
    httpx.post(f"{cluster.gateway_url}/admin/backends/{registered.json()['id']}/disable", headers=admin)
    node.stop()


def test_a_caller_that_reads_slowly_gets_a_long_fast_stream_whole_and_in_order(cluster, unpaced_backend):
    """The node is done long before a caller with a small receive window has read the stream, which the gateway
    writes straight onto that caller's connection: it arrives whole and in order, as for a caller that reads at
    once. (The kernel's buffers here hold the whole 1.2 MB stream; tests/unit/gateway/test_write_through.py
    fills them, and shows the backend paused.)"""
    key = cluster.keys["faculty1"]
    body = json.dumps({"model": "fast-qwen", "messages": [{"role": "user", "content": "a very long story"}],
                       "max_tokens": 6000, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    with httpx.Client(timeout=60) as client:
        quick = client.post(f"{cluster.gateway_url}/v1/chat/completions", content=body,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    host, port = cluster.gateway_url.removeprefix("http://").split(":")
    with socket.socket() as caller:
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        caller.connect((host, int(port)))
        caller.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer %s\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
        time.sleep(1)  # the node is done generating long before the caller reads on
        received = bytearray()
        while not received.endswith(b"\r\n0\r\n\r\n"):
            piece = caller.recv(4096)
            assert piece, "the gateway closed the connection before the stream's end"
            received += piece
            time.sleep(0.001)
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    slow_events, quick_events = sse_payloads(dechunk(chunked)), sse_payloads(quick.content)
    assert quick_events[-1] == slow_events[-1] == "[DONE]"
    assert json.loads(slow_events[-2])["usage"]["completion_tokens"] == 6000
    assert streamed_text(slow_events) == streamed_text(quick_events) != ""


def sse_payloads(body: bytes) -> list[str]:
    return [line.removeprefix("data: ") for line in body.decode().split("\n") if line.startswith("data: ")]


def streamed_text(payloads: list[str]) -> str:
    return "".join(choice["delta"].get("content") or "" for payload in payloads[:-1]
                   for choice in json.loads(payload)["choices"])


def streams_written_straight(cluster) -> float:
    return counts_by_label(cluster, "mindrouter_streams_total", "path").get("straight", 0.0)


def counts_by_label(cluster, sample_name: str, label: str) -> dict[str, float]:
    """The gateway's `sample_name` samples, by the value of their `label`."""
    return {sample.labels[label]: sample.value
            for family in text_string_to_metric_families(httpx.get(f"{cluster.gateway_url}/metrics").text)
            for sample in family.samples if sample.name == sample_name}


def test_requests_from_the_moment_the_lean_gateway_listens_are_answered(tmp_path):
    """mitmproxy opens its listeners before its `running` hooks, and TLS settings make their certificate store
    only there: a request in between used to fail in their `request` hook, and that error stopped the start-up."""
    port = free_port()
    gateway = Service("gateway", [*GATEWAY, "-p", str(port)], {"DATABASE_URL": migrated(tmp_path)}, tmp_path)
    request = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    answers: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(answers) < 20:  # as soon as it listens, then on
            assert time.monotonic() < deadline, gateway.output()[-4000:]
            gateway.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                    connection.sendall(request)
                    answers.append(connection.makefile("rb").readline())
            except ConnectionRefusedError:
                continue
        time.sleep(1)
        gateway.check_alive()
    finally:
        gateway.stop()
    assert answers == [b"HTTP/1.1 200 OK\r\n"] * 20


def test_the_lean_gateway_imports_none_of_mitmdumps_default_addons():
    """mitmproxy's addons package imports all ~30 of mitmdump's addons, and Flask with its onboarding app,
    as soon as one addon is imported: 15 MB of every gateway process's memory for code it never runs."""
    done = subprocess.run([*GATEWAY, "--version"], cwd=REPO_ROOT, timeout=60, capture_output=True, text=True,
                          env={"PYTHONPROFILEIMPORTTIME": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"mitmproxy.master", "mitmproxy.addons.core", "mitmproxy.addons.proxyserver"} <= imported
    assert not {"flask", "jinja2", "click", "mitmproxy.addons.onboarding", "mitmproxy.addons.export"} & imported
