"""Image URLs through a real gateway: fetched only for requests Policy admitted, refusals give back what it took.

One stack for the module (in-process counters), allowed to fetch from loopback, and a local image
server counting what it is asked for. Every test makes a user and key of its own.
"""

from __future__ import annotations

import http.server
import secrets
import threading
import time

import httpx
import pytest

from scheduler.quota import period_of
from sim.stack import free_port, start_stack, wait_until
from store import api_keys, database
from store.db import open_database
from store.models import ApiKey, Quota, User, utcnow

VISION_ON_OLLAMA = "qwen2.5vl"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(scope="module")
def image_server():
    """/cat.png (any query) is an image; any other path is 404. `hits` lists the paths asked for."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            found = self.path.split("?")[0] == "/cat.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png" if found else "text/plain")
            body = PNG if found else b"not here"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.hits = hits
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("image-fetch")
    env = {"DATABASE_URL": f"sqlite:///{work_dir / 'mindrouter.db'}", "SECRET_KEY": secrets.token_hex(16)}
    ports = {name: free_port() for name in ("gateway", "admin", "ollama", "vllm")}
    stack = start_stack(work_dir, env, ports, ("image_fetch_allow_internal=true", "quota_refresh_s=1",
                                               "rate_limit_window_s=60"), key_users=("admin",))
    database.initialize(open_database(env["DATABASE_URL"]))
    yield stack
    stack.stop()


def new_user(**overrides) -> tuple[int, str]:
    user = User.create(username=f"images-{secrets.token_hex(4)}", role="student", **overrides)
    key, prefix = api_keys.generate_key()
    ApiKey.create(user=user.id, prefix=prefix, key_hash=api_keys.hash_key(key), label="image fetch test")
    return user.id, key


def ask(stack, key: str, image_url: str) -> httpx.Response:
    body = {"model": VISION_ON_OLLAMA, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image_url}}]}]}
    return httpx.post(f"{stack.gateway_url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_caller_over_its_rate_limit_makes_the_gateway_fetch_nothing(stack, image_server):
    _, key = new_user(rpm_override=1)
    url = f"{image_server.url}/cat.png?{secrets.token_hex(4)}"
    assert ask(stack, key, url).status_code == 200
    refused = ask(stack, key, url)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert [hit for hit in image_server.hits if hit == url.removeprefix(image_server.url)] == [
        url.removeprefix(image_server.url)]


def test_a_caller_without_a_valid_key_makes_the_gateway_fetch_nothing(stack, image_server):
    url = f"{image_server.url}/cat.png?{secrets.token_hex(4)}"
    assert ask(stack, "mr_abcdefgh_" + "x" * 40, url).status_code == 401
    assert url.removeprefix(image_server.url) not in image_server.hits


def test_an_image_refused_after_admission_gives_back_the_slot_and_the_reservation(stack, image_server):
    user_id, key = new_user(max_concurrent_override=1)
    refused = ask(stack, key, f"{image_server.url}/missing.png")
    assert refused.status_code == 400 and "answered 404" in refused.json()["error"]["message"]
    # The one concurrency slot is free again: the next request is not refused as over the limit.
    assert ask(stack, key, f"{image_server.url}/cat.png").status_code == 200
    time.sleep(0.5)

    def settled() -> bool:
        row = Quota.get_or_none((Quota.user == user_id) & (Quota.period == period_of(utcnow())))
        return row is not None and row.reserved == 0 and row.used > 0

    wait_until(settled, 10, "the reservation settled and only the answered request charged")
