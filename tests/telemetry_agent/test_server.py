"""`GET /gpus` and `GET /healthz` served in-process against the recorded fake NVML."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient, TestServer

from telemetry_agent.nvml_reader import NvmlReader
from telemetry_agent.server import CachedReport, build_app
from tests.telemetry_agent.fake_nvml import FakeNvml
from tests.telemetry_agent.test_report import EXPECTED_REPORT, TAKEN_AT

SECRET = "s3cret-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def serve(
    fake: FakeNvml, scenario: Callable[[TestClient], Awaitable[None]], *, ttl_s=1.0, clock=None
) -> None:
    async def run():
        cache = CachedReport(
            NvmlReader(fake),
            node="gpu-a",
            ttl_s=ttl_s,
            monotonic=clock or FakeClock(),
            wall_clock=lambda: TAKEN_AT,
        )
        async with TestClient(TestServer(build_app(cache, secret=SECRET))) as client:
            await scenario(client)

    asyncio.run(run())


def test_gpus_without_a_secret_is_refused_with_401():
    async def scenario(client):
        response = await client.get("/gpus")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "secret" in (await response.json())["error"]

    fake = FakeNvml()
    serve(fake, scenario)
    assert fake.calls["nvmlInit"] == 0  # NVML is not touched for an unauthenticated caller


def test_gpus_with_a_wrong_secret_or_scheme_is_refused_with_401():
    async def scenario(client):
        for header in (f"Bearer {SECRET}x", "Bearer ", f"Basic {SECRET}", SECRET):
            assert (await client.get("/gpus", headers={"Authorization": header})).status == 401

    serve(FakeNvml(), scenario)


def test_gpus_with_the_secret_answers_the_report_exactly():
    async def scenario(client):
        response = await client.get("/gpus", headers=AUTH)
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.json() == EXPECTED_REPORT

    serve(FakeNvml(), scenario)


def test_healthz_needs_no_secret():
    async def scenario(client):
        response = await client.get("/healthz")
        assert response.status == 200 and await response.json() == {"status": "ok"}

    serve(FakeNvml(), scenario)


def test_no_driver_answers_503_saying_why_and_keeps_serving():
    async def scenario(client):
        response = await client.get("/gpus", headers=AUTH)
        assert response.status == 503
        assert "NVML Shared Library Not Found" in (await response.json())["error"]
        assert (await client.get("/healthz")).status == 200

    serve(FakeNvml(init_error="NVMLError_LibraryNotFound"), scenario)


def test_a_driver_that_appears_later_is_picked_up_after_the_ttl():
    fake = FakeNvml(init_error="NVMLError_DriverNotLoaded")
    clock = FakeClock()

    async def scenario(client):
        assert (await client.get("/gpus", headers=AUTH)).status == 503
        fake.init_error = None
        assert (await client.get("/gpus", headers=AUTH)).status == 503  # the failure is cached too
        clock.now += 1.5
        assert (await client.get("/gpus", headers=AUTH)).status == 200

    serve(fake, scenario, clock=clock)
    assert fake.calls["nvmlInit"] == 2


def test_two_polls_within_the_ttl_read_nvml_once_and_a_later_poll_reads_again():
    fake = FakeNvml()
    clock = FakeClock()

    async def scenario(client):
        await client.get("/gpus", headers=AUTH)
        clock.now += 0.5
        await client.get("/gpus", headers=AUTH)
        assert fake.calls["nvmlDeviceGetCount"] == 1
        clock.now += 0.6
        await client.get("/gpus", headers=AUTH)
        assert fake.calls["nvmlDeviceGetCount"] == 2

    serve(fake, scenario, clock=clock)


def test_a_burst_of_concurrent_polls_shares_one_read():
    fake = FakeNvml()

    async def scenario(client):
        responses = await asyncio.gather(*(client.get("/gpus", headers=AUTH) for _ in range(10)))
        assert {response.status for response in responses} == {200}

    serve(fake, scenario)
    assert fake.calls["nvmlDeviceGetCount"] == 1


def test_nvml_is_read_off_the_event_loop_thread():
    fake = FakeNvml()

    async def scenario(client):
        await client.get("/gpus", headers=AUTH)

    serve(fake, scenario)
    assert threading.main_thread().name not in fake.threads
    assert all(name.startswith("nvml") for name in fake.threads)
    assert fake.calls["nvmlShutdown"] == 1  # the app's cleanup shuts NVML down
