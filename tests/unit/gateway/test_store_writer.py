"""The store writer keeps every write through a database outage, a full queue and a restart."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import re
import secrets
import threading
import time

import pytest
from mitmproxy.test import taddons, tflow

import migrations
from addons import record as record_module
from addons import writer as writer_module
from addons.context import RequestContext, Route
from addons.record import Record
from addons.writer import StoreWriter
from sim.stack import free_port
from store import database, init_database
from store.db import open_database
from store.models import Artifact, RequestArtifact, RequestBody, User
from translators.pipeline import parse_client_request

Write = getattr(writer_module, "Write", None)
if Write is not None:
    @writer_module.writes("test.user")
    def create_user(data: dict) -> None:
        User.create(username=data["username"], role="student")


@pytest.fixture
def sqlite_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'mindrouter.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    db = init_database(url)
    migrations.upgrade(db)
    yield db
    database.initialize(db)
    db.close()


class Outage:
    """Points the shared store at a MariaDB port nobody listens on, and back."""

    def __init__(self, db) -> None:
        self.db = db
        self.dead = open_database(f"mysql://root@127.0.0.1:{free_port()}/gone?connect_timeout=1")

    def begin(self) -> None:
        database.initialize(self.dead)

    def end(self) -> None:
        database.initialize(self.db)


STARTED: list[StoreWriter] = []


@pytest.fixture(autouse=True)
def stop_writers_left_running():
    """A failed test leaves no writer thread to write into the next test's database."""
    yield
    while STARTED:
        stop(STARTED.pop(), flush_s=0.1)


def start(writer: StoreWriter, tmp_path) -> None:
    STARTED.append(writer)
    if hasattr(writer, "start"):
        writer.start(tmp_path / "spill", "test")
    else:  # the writer before spill files
        writer.running()


def stop(writer: StoreWriter, flush_s: float = 10) -> None:
    if hasattr(writer, "stop"):
        writer.stop(flush_s)
    else:
        writer.done()


def usernames() -> list[str]:
    return [user.username for user in User.select().order_by(User.id)]


def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_writes_submitted_while_the_database_is_away_are_written_when_it_is_back(sqlite_db, tmp_path):
    outage = Outage(sqlite_db)
    writer = StoreWriter()
    start(writer, tmp_path)
    outage.begin()
    for index in range(50):
        writer.submit(lambda index=index: User.create(username=f"user{index}", role="student"))
    time.sleep(1.0)
    outage.end()
    try:
        wait_for(lambda: User.select().count() == 50)
    finally:
        stop(writer)
    assert usernames() == [f"user{index}" for index in range(50)]


requires_records = pytest.mark.skipif(Write is None, reason="writes as data records")


@requires_records
def test_a_write_the_database_refuses_is_set_aside_and_the_others_written(sqlite_db, tmp_path):
    writer = StoreWriter()
    start(writer, tmp_path)
    for name in ("a", "b", "a", "c"):
        writer.submit(Write("test.user", {"username": name, "request_id": f"req-{name}"}))
    stop(writer)
    assert usernames() == ["a", "b", "c"]
    set_aside = [json.loads(line) for line in writer.set_aside_path.read_text().splitlines()]
    assert [entry["write"]["data"]["username"] for entry in set_aside] == ["a"]
    assert "UNIQUE" in set_aside[0]["error"] or "Duplicate" in set_aside[0]["error"]


@requires_records
def test_past_its_bound_the_queue_spills_to_disk_and_keeps_the_order(sqlite_db, tmp_path):
    outage = Outage(sqlite_db)
    writer = StoreWriter()
    writer.max_writes = 10
    start(writer, tmp_path)
    outage.begin()
    started = time.monotonic()
    for index in range(3000):
        writer.submit(Write("test.user", {"username": f"user{index:04}"}))
    assert time.monotonic() - started < 2  # submit never waits on the disk or the database
    wait_for(lambda: len(writer.memory) <= 10 and not writer.in_transit)  # the writer holds one batch; the rest is on disk
    assert writer.spill.waiting >= 3000 - 10 - writer_module.BATCH_LIMIT
    outage.end()
    try:
        wait_for(lambda: User.select().count() == 3000, timeout=20)
    finally:
        stop(writer)
    assert usernames() == [f"user{index:04}" for index in range(3000)]
    assert not list((tmp_path / "spill").glob("writes-*"))


@requires_records
def test_writes_the_database_would_not_take_at_shutdown_are_written_at_the_next_start(sqlite_db, tmp_path):
    outage = Outage(sqlite_db)
    writer = StoreWriter()
    start(writer, tmp_path)
    writer.submit(Write("test.user", {"username": "before"}))
    wait_for(lambda: User.select().count() == 1)
    outage.begin()
    for index in range(20):
        writer.submit(Write("test.user", {"username": f"user{index}"}))
    stop(writer, flush_s=0.5)
    outage.end()
    assert User.select().count() == 1
    spilled = list((tmp_path / "spill").glob("writes-*.jsonl"))
    assert len(spilled) == 1 and len(spilled[0].read_text().splitlines()) == 20

    restarted = StoreWriter()
    start(restarted, tmp_path)
    restarted.submit(Write("test.user", {"username": "after"}))
    stop(restarted)
    assert usernames() == ["before", *(f"user{index}" for index in range(20)), "after"]
    third = StoreWriter()
    start(third, tmp_path)
    stop(third)
    assert User.select().count() == 22  # nothing replayed twice


@requires_records
def test_a_spill_of_another_database_is_left_alone(sqlite_db, tmp_path, monkeypatch):
    outage = Outage(sqlite_db)
    writer = StoreWriter()
    start(writer, tmp_path)
    outage.begin()
    writer.submit(Write("test.user", {"username": "elsewhere"}))
    stop(writer, flush_s=0.3)
    outage.end()
    monkeypatch.setenv("DATABASE_URL", "sqlite:///another.db")
    other = StoreWriter()
    start(other, tmp_path)
    stop(other)
    assert User.select().count() == 0


def test_submit_from_many_threads_keeps_each_ones_order(sqlite_db, tmp_path):
    writer = StoreWriter()
    start(writer, tmp_path)

    def submitter(name: str) -> None:
        for index in range(100):
            writer.submit(lambda index=index: User.create(username=f"{name}-{index:03}", role="student"))

    threads = [threading.Thread(target=submitter, args=(name,)) for name in "xyz"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop(writer)
    names = usernames()
    for name in "xyz":
        assert [n for n in names if n.startswith(name)] == [f"{name}-{index:03}" for index in range(100)]


# ---- what Record hands the writer ---------------------------------------------------------------

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def audit_context(body: bytes, canonical=None) -> RequestContext:
    return RequestContext(request_id=f"req-{secrets.token_hex(4)}", client_address="127.0.0.1", client_body=body,
                          route=Route("inference", "openai", "/v1/chat/completions"), canonical=canonical)


def test_a_prompt_beyond_max_allowed_packet_is_stored_whole_as_an_artifact(migrated_db, tmp_path):
    writer = StoreWriter()
    start(writer, tmp_path)
    record = Record(writer, str(tmp_path / "artifacts"))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "needle " + "x" * 20 * 2**20}]}).encode()
    record.record(audit_context(body), 200, b'{"choices": []}', error="")
    stop(writer)
    stored = RequestBody.get()
    assert len(stored.prompt.encode()) < 2 * 2**20 and "needle" in stored.prompt  # searchable head
    sha256 = re.search(r"artifact:sha256:([0-9a-f]{64})", stored.prompt).group(1)
    artifact = Artifact.get(Artifact.sha256 == sha256)
    assert (tmp_path / "artifacts" / artifact.path).read_bytes() == body
    assert [link.artifact.sha256 for link in RequestArtifact.select()] == [sha256]  # the audit detail lists it
    assert stored.response == '{"choices": []}'


def test_image_references_are_made_on_the_writer_thread_not_the_event_loop(sqlite_db, tmp_path, monkeypatch):
    made_on = []
    original = record_module.prompt_with_image_references

    def watched(raw, images):
        made_on.append(threading.current_thread().name)
        return original(raw, images)

    monkeypatch.setattr(record_module, "prompt_with_image_references", watched)
    writer = StoreWriter()
    start(writer, tmp_path)
    record = Record(writer, str(tmp_path / "artifacts"))
    b64 = base64.b64encode(PNG).decode()
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}]}]}).encode()
    record.record(audit_context(body, parse_client_request("/v1/chat/completions", body, 2**25)), 200, b"{}", error="")
    stop(writer)
    assert made_on == ["mindrouter-store-writer"]
    prompt = RequestBody.get().prompt
    assert b64 not in prompt and f"artifact:sha256:{hashlib.sha256(PNG).hexdigest()}" in prompt


@requires_records
def test_an_audit_write_survives_the_trip_to_disk_unchanged():
    write = Write("audit", {"row": {"request_id": "abc", "created_at": dt.datetime(2026, 12, 3, 4, 5, 6, 789)},
                            "body": b"\x00\xffprompt", "images": [PNG], "answer_text": "caf\u00e9"}, size=10)
    again = writer_module.decode_write(writer_module.encode_write(write))
    assert (again.kind, again.data) == (write.kind, write.data)
    assert write.label() == "audit (request abc)"


@requires_records
def test_the_last_flush_waits_for_flows_still_in_flight(sqlite_db, tmp_path):
    writer = StoreWriter()
    start(writer, tmp_path)
    shutdown = writer_module.WriterShutdown(writer)
    flow = tflow.tflow()
    shutdown.requestheaders(flow)

    async def scenario() -> None:
        with taddons.context(writer):
            stopping = asyncio.create_task(shutdown.done())
            await asyncio.sleep(0.3)
            assert not stopping.done()
            writer.submit(Write("test.user", {"username": "in-flight"}))  # what its error hook submits
            shutdown.error(flow)
            await asyncio.wait_for(stopping, 5)

    asyncio.run(scenario())
    assert usernames() == ["in-flight"]


def test_an_idle_writer_writes_at_once_and_a_busy_one_gathers_a_batch(sqlite_db, tmp_path, monkeypatch):
    """One transaction for many writes under load (GATHER_S after the last batch), none of that wait when idle."""
    batches: list[int] = []
    write_batch = StoreWriter.write_batch
    monkeypatch.setattr(StoreWriter, "write_batch", lambda self, batch: batches.append(len(batch)) or write_batch(self, batch))
    writer = StoreWriter()
    start(writer, tmp_path)
    try:
        submitted = time.monotonic()
        writer.submit(lambda: User.create(username="first", role="student"))
        wait_for(lambda: usernames() == ["first"])
        assert time.monotonic() - submitted < writer_module.GATHER_S + 1  # not held back: nothing came before it
        for index in range(10):  # within the gathering window of the first batch
            writer.submit(lambda index=index: User.create(username=f"busy{index}", role="student"))
            time.sleep(writer_module.GATHER_S / 20)
        wait_for(lambda: len(usernames()) == 11)
        time.sleep(2 * writer_module.GATHER_S)  # idle again
        writer.submit(lambda: User.create(username="last", role="student"))
        wait_for(lambda: len(usernames()) == 12)
    finally:
        stop(writer)
    assert batches[0] == 1 and batches[-1] == 1
    assert len(batches) <= 4, batches  # 1 + the ten gathered into one or two + 1; one each without gathering
