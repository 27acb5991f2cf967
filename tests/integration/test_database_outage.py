"""MariaDB restarted under load, and a SIGTERM with requests in flight: no accepted request's audit row lost.

The restart test runs a private `mariadbd` (tests/store/private_mariadb.py): the shared server on
3306 serves the other tests on both xdist workers and must never be restarted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import signal
import threading
import time

import httpx
import pytest

from sim.stack import wait_until
from store import api_keys
from store.db import open_database
from store.models import ApiKey, Request, RequestBody, User
from tests.store.private_mariadb import private_mariadb, requires_mariadbd
from tests.support.cluster import NO_LIMITS, start_cluster

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
CLIENTS = 4


def chat(marker: str, index: int) -> dict:
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": f"{marker} {index}"}]}


class Load:
    """A few clients sending chat requests one after another until told to stop; counts the 200s."""

    def __init__(self, url: str, key: str, marker: str) -> None:
        self.url, self.key, self.marker = url, key, marker
        self.accepted = 0
        self.statuses: dict[int, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {self.key}"}) as client:
            await asyncio.gather(*(self.client(client, number) for number in range(CLIENTS)))

    async def client(self, client: httpx.AsyncClient, number: int) -> None:
        index = number
        while not self.stopping.is_set():
            try:
                status = (await client.post(f"{self.url}/v1/chat/completions", json=chat(self.marker, index))).status_code
            except httpx.HTTPError:
                status = 0
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.accepted += 1
            else:
                await asyncio.sleep(0.1)
            index += CLIENTS

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(60)


def rows_with(marker: str, since: dt.datetime | None = None) -> int:
    query = Request.select().join(RequestBody).where(RequestBody.prompt.contains(marker), Request.status == 200)
    if since is not None:
        query = query.where(Request.created_at >= since)
    return query.count()


@pytest.mark.mariadb
@requires_mariadbd
def test_mariadb_restarted_under_load_loses_no_row_and_service_resumes(tmp_path):
    with private_mariadb(tmp_path / "mariadb") as server:
        server.create_database("mindrouter")
        url = server.url("mindrouter")
        stack = start_cluster(tmp_path, url, gateway_options=NO_LIMITS)
        db = open_database(url)
        marker = f"outage-{secrets.token_hex(4)}"
        try:
            key_to_revoke = stack.new_key("student1", "revoked after the restart")

            def ask(key: str) -> int:
                return httpx.post(f"{stack.gateway_url}/v1/chat/completions", json=chat("keys", 0), timeout=10,
                                  headers={"Authorization": f"Bearer {key}"}).status_code

            assert ask(key_to_revoke) == 200  # verified and cached before the outage

            load = Load(stack.gateway_url, stack.keys["faculty1"], marker)
            load.thread.start()
            time.sleep(2)
            assert load.accepted > 0
            server.stop()
            accepted_before = load.accepted
            time.sleep(3)
            accepted_during = load.accepted - accepted_before
            server.start()
            back_at = time.monotonic()
            back_wall = dt.datetime.now(dt.UTC).replace(tzinfo=None)

            with db.bind_ctx([Request, RequestBody, ApiKey, User]):
                try:
                    wait_until(lambda: rows_with(marker, since=back_wall) > 0, 10, "audit rows written after the restart")
                except TimeoutError as timeout:  # what the clients got and what the gateway logged, to see why
                    logged = [line for line in stack.service("gateway").output().splitlines() if line.startswith("[")]
                    raise AssertionError(f"statuses {load.statuses}; gateway log:\n" + "\n".join(logged[-40:])) from timeout
                assert time.monotonic() - back_at < 10
                wait_until(lambda: httpx.get(f"{stack.gateway_url}/readyz").status_code == 200, 10 - (
                    time.monotonic() - back_at), "/readyz ready again")

                ApiKey.update(status="revoked", revoked_at=back_wall).where(
                    ApiKey.prefix == key_to_revoke.split("_")[1]).execute()
                revoked_at = time.monotonic()
                wait_until(lambda: ask(key_to_revoke) == 401, 5, "the revoked key refused")
                assert time.monotonic() - revoked_at < 5

                new_key, prefix = api_keys.generate_key()  # a key never seen before: verified afresh
                ApiKey.create(user=User.get(User.username == "staff1"), prefix=prefix,
                              key_hash=api_keys.hash_key(new_key), label="made after the restart")
                assert ask(new_key) == 200

                time.sleep(1)
                load.stop()
                assert stack.service("gateway").stop(signal.SIGTERM) == 0
                print(f"statuses {load.statuses}, {accepted_during} accepted while the database was down")
                assert accepted_during > 0  # served from caches, their rows kept until the database was back
                assert rows_with(marker) == load.accepted, load.statuses
        finally:
            stack.stop()
            db.close()


def test_requests_in_flight_at_sigterm_are_audited(tmp_path):
    """The writer stops last: requests still streaming when SIGTERM arrives get their audit rows."""
    stack = start_cluster(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", gateway_options=NO_LIMITS,
                          sim_args=("--tokens-per-s", "10"))
    marker = f"in-flight-{secrets.token_hex(4)}"
    started = threading.Semaphore(0)

    def stream(index: int) -> None:
        body = {**chat(marker, index), "max_tokens": 40, "stream": True}
        try:
            with httpx.stream("POST", f"{stack.gateway_url}/v1/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {stack.keys['faculty1']}"}) as response:
                started.release()
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass

    try:
        clients = [threading.Thread(target=stream, args=(index,)) for index in range(6)]
        for client in clients:
            client.start()
        for _ in clients:
            assert started.acquire(timeout=20)
        time.sleep(0.5)
        assert stack.service("gateway").stop(signal.SIGTERM) == 0
        for client in clients:
            client.join(30)
    finally:
        stack.stop()

    db = open_database(stack.env["DATABASE_URL"])
    with db.bind_ctx([Request, RequestBody]):
        rows = list(Request.select().join(RequestBody).where(RequestBody.prompt.contains(marker)))
    assert len(rows) == 6
