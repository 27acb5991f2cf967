"""The gateway's only database writer: one thread that batches writes, so no hook ever waits on the database.

What it promises:

- **Order.** Writes reach the database in the order they were submitted, a batch per transaction.
- **Few transactions under load.** A batch is taken at once when the writer was idle; while writes keep
  coming, the next one gathers for `GATHER_S` after the last was written (less when it fills up), so a
  busy gateway pays one transaction, and one rollup and key update each, for many requests.
- **Nothing dropped while the database is away.** A batch that fails because the database cannot
  be reached (or holds a lock) is kept and retried with a capped backoff until it can be written.
  A batch that fails while the database answers is retried one write at a time; a write that
  still fails on its own (a data error: a duplicate key, a row the server refuses) is set aside:
  logged with its request id and appended to `set-aside-<database>.jsonl` beside the spill files,
  never silently lost. To replay them once the cause is fixed, write each entry's `write` object
  as a line of `writes-<database>-replay.jsonl` in that folder: the next start replays it.
- **Bounded memory.** Past `writer_queue_max` writes (or `writer_queue_max_mb`) the oldest waiting
  writes move to a JSON-lines spill file, by a thread of their own, so `submit` (called from hooks
  on the event loop) never does file or database work. The file is read back in order, and a
  spill left by an earlier run for the same database is replayed at start.
- **Last to stop.** On shutdown the writer waits for the other addons' in-flight flows to end and
  for their `done` hooks to run (it puts a small addon at the end of mitmproxy's chain), flushes,
  and leaves on disk whatever the database would not take in `writer_flush_s`.

A write is data, `Write(kind, data)`, with its function registered by `@writes(kind)`, so that it
can wait on disk and run after a restart. A plain callable is still accepted (it runs the same
way) but can never be spilled: past the bound it is kept in memory only up to `writer_queue_max`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from mitmproxy import ctx, exceptions, http

from store import database
from store.db import database_url

log = logging.getLogger(__name__)

BATCH_LIMIT = 500
GATHER_S = 0.05  # while busy, how long the next batch gathers after the last was written
SPILL_CHUNK = 1000  # writes moved to disk at a time
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0  # so writing resumes within seconds of the database coming back
WRITE_SIZE = 256  # bytes a small write is taken to hold in memory

# MariaDB/MySQL error numbers that say "the server is away or lost the connection", not "this
# write is wrong": client errors (2002 can't connect, 2003, 2006 gone away, 2013 lost, ...), server
# shutting down (1053), connection killed (1927), interaction timeout (4031).
CONNECTION_ERRORS = {1053, 1927, 4031}
# Lock waits and deadlocks: the same writes succeed when tried again.
TRANSIENT_ERRORS = {1205, 1213}
SQLITE_TRANSIENT = ("database is locked", "database table is locked", "busy")
SQLITE_UNAVAILABLE = ("unable to open database", "disk i/o error", "readonly database")


# ---- writes as data ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Write:
    """One database write as data: `kind` names a function registered with `@writes`, `data` is
    its one argument (JSON values, plus bytes and datetimes). `size` is about what it holds in memory."""

    kind: str
    data: dict
    size: int = WRITE_SIZE

    def label(self) -> str:
        request_id = self.data.get("request_id") or self.data.get("row", {}).get("request_id")
        return f"{self.kind} (request {request_id})" if request_id else self.kind


WRITES: dict[str, Callable[[dict], None]] = {}
WRITES_TOGETHER: dict[str, Callable[[list[dict]], None]] = {}


def writes(kind: str):
    """Register the function that performs writes of `kind` (it runs on the writer thread)."""
    def register(function: Callable[[dict], None]) -> Callable[[dict], None]:
        WRITES[kind] = function
        return function
    return register


def writes_together(kind: str):
    """Register the function that performs many writes of `kind` at once, given their data in order (the
    writer's batches: one statement for many rows, where a table allows it). Writes of kinds registered here
    must commute with one another (other tables, or additions), for `perform_all` gathers them."""
    def register(function: Callable[[list[dict]], None]) -> Callable[[list[dict]], None]:
        WRITES_TOGETHER[kind] = function
        return function
    return register


def perform_all(batch: list) -> None:
    """Perform `batch` in order, except that between two other writes the writes of kinds registered with
    `writes_together` are performed kind by kind, each kind at once: a request's audit and its quota usage
    come in turns, and one of each at a time would cost the backlog after an outage a statement per write."""
    def together(write) -> bool:
        return isinstance(write, Write) and write.kind in WRITES_TOGETHER

    for gathered, run in itertools.groupby(batch, key=together):
        if not gathered:
            for write in run:
                perform(write)
            continue
        by_kind: dict[str, list[dict]] = {}
        for write in run:
            by_kind.setdefault(write.kind, []).append(write.data)
        for kind, data in by_kind.items():
            WRITES_TOGETHER[kind](data)


def perform(write: Write | Callable[[], None]) -> None:
    if not isinstance(write, Write):
        write()
        return
    function = WRITES.get(write.kind)
    if function is None:
        raise LookupError(f"no function registered for writes of kind {write.kind!r}")
    function(write.data)


def label_of(write: Write | Callable[[], None]) -> str:
    return write.label() if isinstance(write, Write) else getattr(write, "__qualname__", repr(write))


def _tagged(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"cannot keep a {type(value).__name__} in a spill file")


def _untagged(value: dict) -> Any:
    if len(value) == 1:
        if "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        if "$datetime" in value:
            return dt.datetime.fromisoformat(value["$datetime"])
    return value


def encode_write(write: Write) -> str:
    return json.dumps({"kind": write.kind, "data": write.data}, default=_tagged, separators=(",", ":"))


def decode_write(line: str | bytes) -> Write:
    record = json.loads(line, object_hook=_untagged)
    return Write(record["kind"], record["data"], len(line))


# ---- how a failure is read ---------------------------------------------------------------------

def failure_kind(exc: BaseException) -> str:
    """'transient' (try the same writes again), 'connection' (the database may be away) or 'data'."""
    if isinstance(exc, peewee.InterfaceError):
        return "connection"
    if not isinstance(exc, peewee.OperationalError):
        return "data"
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code is not None:
        if code in TRANSIENT_ERRORS:
            return "transient"
        return "connection" if 2000 <= code < 3000 or code in CONNECTION_ERRORS else "data"
    message = str(exc).lower()
    if any(text in message for text in SQLITE_TRANSIENT):
        return "transient"
    return "connection" if any(text in message for text in SQLITE_UNAVAILABLE) else "data"


class Abandoned(Exception):
    """The database stayed away past the shutdown deadline; `rest` was not written."""

    def __init__(self, rest: list) -> None:
        super().__init__(f"{len(rest)} writes not written")
        self.rest = rest


# ---- the spill file ----------------------------------------------------------------------------

class SpillFile:
    """Writes waiting on disk: JSON lines, read from the front; `<name>.offset` says how far the
    database has them, so a crash replays nothing twice. Locked (flock) while its process lives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_path = path.with_name(path.name + ".offset")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+b")  # noqa: SIM115 - open for the writer's lifetime
        fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.committed = self.read_offset(self.offset_path)
        self.read_at = self.committed
        self.end = self.whole_lines_end()
        self.waiting = self.count_lines(self.committed)

    def whole_lines_end(self) -> int:
        """The file's end, after cutting off a last line a crash left unfinished."""
        self.file.seek(0, os.SEEK_END)
        end = self.file.tell()
        if end:
            self.file.seek(max(0, end - 2**20))
            tail = self.file.read()
            if not tail.endswith(b"\n"):
                end -= len(tail) - (tail.rfind(b"\n") + 1)
                log.error("spill file %s: an unfinished last line dropped", self.path)
                self.file.truncate(end)
        return end

    @staticmethod
    def read_offset(offset_path: Path) -> int:
        try:
            return int(offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def count_lines(self, start: int) -> int:
        self.file.seek(start)
        return sum(1 for line in self.file if line.endswith(b"\n"))

    def append(self, lines: list[bytes]) -> None:
        self.file.seek(0, os.SEEK_END)
        self.file.write(b"".join(lines))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.end = self.file.tell()
        self.waiting += len(lines)

    def take(self, limit: int) -> tuple[list[Write], list[int]]:
        """Up to `limit` writes from the front, not yet handed out, and the offset after each; the
        last offset is where the batch ends (past any unreadable line, which is skipped)."""
        taken, offsets = [], []
        self.file.seek(self.read_at)
        while len(taken) < limit and self.read_at < self.end:
            line = self.file.readline()
            if not line.endswith(b"\n"):
                break
            self.read_at += len(line)
            try:
                taken.append(decode_write(line))
                offsets.append(self.read_at)
            except (ValueError, KeyError, TypeError):
                log.error("spill file %s: unreadable line at offset %d skipped", self.path, self.read_at - len(line))
                self.waiting -= 1
                if offsets:
                    offsets[-1] = self.read_at
        if not taken:  # nothing but unreadable lines: they count as written
            self.commit(self.read_at, 0)
        return taken, offsets

    def commit(self, offset: int, count: int) -> None:
        """The database has everything before `offset`; when that is all, start the file afresh."""
        self.committed = offset
        self.waiting -= count
        if self.committed >= self.end and self.read_at >= self.end:
            self.file.truncate(0)
            self.committed = self.read_at = self.end = self.waiting = 0
            self.offset_path.unlink(missing_ok=True)
            return
        partial = self.offset_path.with_name(self.offset_path.name + ".part")
        partial.write_text(str(offset))
        partial.replace(self.offset_path)

    def give_back(self) -> None:
        """Writes handed out but not written go back to the front."""
        self.read_at = self.committed

    def remaining_lines(self) -> list[bytes]:
        self.file.seek(self.committed)
        return [line for line in self.file.readlines() if line.endswith(b"\n")]

    def rewrite(self, lines: list[bytes]) -> None:
        """Replace everything not yet written with `lines` (at shutdown, with memory's writes added)."""
        partial = self.path.with_name(self.path.name + ".part")
        with open(partial, "wb") as out:
            out.write(b"".join(lines))
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.path)
        self.offset_path.unlink(missing_ok=True)
        self.committed = self.read_at = 0
        self.end = sum(len(line) for line in lines)
        self.waiting = len(lines)

    def close(self) -> None:
        empty = self.end <= self.committed
        self.file.close()
        if empty:
            self.path.unlink(missing_ok=True)
            self.offset_path.unlink(missing_ok=True)


def adopt_orphans(spill: SpillFile, pattern: str) -> int:
    """Append to `spill` the unwritten lines of spill files other (stopped) processes left for this
    database; files a live process holds stay theirs. The number of writes adopted."""
    adopted = 0
    for path in sorted(spill.path.parent.glob(pattern)):
        if path == spill.path:
            continue
        try:
            orphan = SpillFile(path)
        except BlockingIOError:  # a running gateway's
            continue
        lines = orphan.remaining_lines()
        if lines:
            spill.append(lines)
            adopted += len(lines)
        orphan.file.close()
        path.unlink(missing_ok=True)
        orphan.offset_path.unlink(missing_ok=True)
    return adopted


def database_tag(url: str) -> str:
    """Which database a spill file belongs to (the URL without its password, hashed)."""
    return hashlib.sha256(re.sub(r"://([^:/@]*):[^@]*@", r"://\1@", url).encode()).hexdigest()[:12]


# ---- the writer --------------------------------------------------------------------------------

class StoreWriter:
    """Runs submitted writes in order on a background thread, a batch per transaction."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self.changed = threading.Condition(lock)  # the writer thread waits on it
        self.overflowing = threading.Condition(lock)  # the spill thread waits on it
        self.memory: deque = deque()  # the newest writes; older ones may be in the spill file
        self.memory_bytes = 0
        self.closures = 0
        self.in_transit = 0  # writes between memory and the spill file
        self.file_lock = threading.Lock()  # the spill file's reads and appends; never held with `changed` waiting
        self.stopping = False
        self.finished = False  # the writer thread wrote (or kept) its last write
        self.flush_deadline: float | None = None
        self.gather_until = 0.0  # time.monotonic(): a batch taken before then waits for more writes
        self.max_writes = 10_000
        self.max_bytes = 64 * 2**20
        self.spill: SpillFile | None = None
        self.spill_dir: Path | None = None
        self.set_aside_path: Path | None = None
        self.thread: threading.Thread | None = None
        self.spiller: threading.Thread | None = None
        self.stopped = threading.Event()
        self.shutdown_addon: WriterShutdown | None = None

    # ---- mitmproxy hooks -------------------------------------------------------------------------

    def load(self, loader):
        loader.add_option(
            "writer_queue_max", int, 10_000,
            "Database writes the gateway keeps in memory while the database is slow or away; past it "
            "the oldest go to the spill file (writer_spill_dir).",
        )
        loader.add_option(
            "writer_queue_max_mb", int, 64,
            "MiB of waiting database writes (audit bodies included) kept in memory before spilling to disk.",
        )
        loader.add_option(
            "writer_spill_dir", str, "",
            "Folder for writes waiting on disk and writes set aside (default: 'spill' beside "
            "ARTIFACT_STORAGE_PATH). A spill left by an earlier run for the same database is replayed at start.",
        )
        loader.add_option(
            "writer_drain_s", int, 5,
            "On shutdown, seconds to wait for requests still in flight to end before the last flush "
            "(after the drain: shutdown_grace_s).",
        )
        loader.add_option(
            "writer_flush_s", int, 3,
            "On shutdown, seconds to keep retrying the database; what it would not take stays in the spill file.",
        )

    def configure(self, updated):
        if "writer_queue_max" in updated or "writer_queue_max_mb" in updated:
            if ctx.options.writer_queue_max < 1 or ctx.options.writer_queue_max_mb < 1:
                raise exceptions.OptionsError(
                    f"writer_queue_max and writer_queue_max_mb must be at least 1, not "
                    f"{ctx.options.writer_queue_max} and {ctx.options.writer_queue_max_mb}")
            self.max_writes = ctx.options.writer_queue_max
            self.max_bytes = ctx.options.writer_queue_max_mb * 2**20

    def running(self):
        directory = ctx.options.writer_spill_dir or str(
            Path(os.environ.get("ARTIFACT_STORAGE_PATH", "data/artifacts")).parent / "spill")
        self.start(Path(directory), f"{socket.gethostname()}-{ctx.options.listen_port}")
        self.install_shutdown_addon()

    def done(self):
        """At exit the shutdown addon at the end of the chain stops the writer, after everyone else;
        on a script reload (the process goes on) it stops here."""
        master = getattr(ctx, "master", None)
        exiting = master is not None and master.should_exit.is_set()
        if exiting and self.shutdown_addon is not None and self.shutdown_addon.writer is self:
            return
        self.stop()

    # ---- start and stop --------------------------------------------------------------------------

    def start(self, spill_dir: Path, process_name: str) -> None:
        """Start the writer thread; it opens this process's spill file (adopting what stopped
        processes left for this database) before anything else, off the event loop."""
        tag = database_tag(database_url())
        self.spill_dir = spill_dir
        self.set_aside_path = spill_dir / f"set-aside-{tag}.jsonl"
        spill_path = spill_dir / f"writes-{tag}-{process_name}.jsonl"
        self.thread = threading.Thread(target=self.write_forever, args=(spill_path, f"writes-{tag}-*.jsonl"),
                                       name="mindrouter-store-writer", daemon=True)
        self.thread.start()

    def open_spill(self, path: Path, orphans: str) -> None:
        try:
            spill = SpillFile(path)
            adopted = adopt_orphans(spill, orphans)
        except OSError as exc:
            log.error("cannot keep waiting writes in %s (%s): they stay in memory only", path.parent, exc)
            return
        if adopted or spill.waiting:
            log.warning("replaying %d database writes left on disk by an earlier run", spill.waiting)
        with self.changed:
            self.spill = spill
            self.spiller = threading.Thread(target=self.spill_forever, name="mindrouter-store-spiller", daemon=True)
        self.spiller.start()

    def install_shutdown_addon(self) -> None:
        master = getattr(ctx, "master", None)
        if master is None:
            return
        existing = master.addons.get(WriterShutdown.name)
        if existing is not None:  # a script reload: the new writer is the one to stop last
            existing.writer = self
            self.shutdown_addon = existing
            return
        self.shutdown_addon = WriterShutdown(self)
        master.addons.add(self.shutdown_addon)

    def stop(self, flush_s: float = 10.0) -> None:
        """Write everything submitted so far; what the database will not take within `flush_s`
        stays in the spill file for the next start. Blocks: call it off the event loop."""
        if self.thread is None or self.stopped.is_set():
            return
        with self.changed:
            self.stopping = True
            self.flush_deadline = time.monotonic() + flush_s
            self.changed.notify_all()
        self.thread.join(flush_s + 60)
        if self.spiller:
            self.spiller.join(10)
        if self.spill is not None:
            self.spill.close()
        self.stopped.set()

    # ---- submitting (on the event loop) ----------------------------------------------------------

    def submit(self, write: Write | Callable[[], None]) -> None:
        """Queue a write; never waits on the database or the disk."""
        with self.changed:
            if isinstance(write, Write):
                self.memory_bytes += write.size
            else:
                if self.closures >= self.max_writes:
                    log.error("database write %s dropped: %d unwritten closures in memory (submit a Write "
                              "record to have it kept on disk)", label_of(write), self.closures)
                    return
                self.closures += 1
            self.memory.append(write)
            # The writer waits for a first write, or for a full batch while it gathers one: a wake-up for
            # every write in between would only cost the event loop the GIL.
            if len(self.memory) == 1 or len(self.memory) >= BATCH_LIMIT:
                self.changed.notify()
            if self.spiller is not None and self.over_bound():
                self.overflowing.notify()

    def pending(self) -> int:
        """Writes submitted and not yet written (in memory, moving to disk, or on disk)."""
        with self.changed:
            return len(self.memory) + self.in_transit + (self.spill.waiting if self.spill else 0)

    # ---- the spill thread ------------------------------------------------------------------------

    def over_bound(self, share: float = 1.0, set_apart: int = 0) -> bool:
        """More waiting records in memory than `share` of the bound allows (`set_apart`: closures
        taken out of memory for a moment)."""
        records = len(self.memory) + set_apart - self.closures
        return records > 0 and (records > self.max_writes * share or self.memory_bytes > self.max_bytes * share)

    def spill_forever(self) -> None:
        while True:
            with self.changed:
                self.overflowing.wait_for(lambda: self.over_bound() or self.finished)
                if self.finished:
                    return
                chunk, kept = [], []
                # down to half the bound, so a full queue costs one file append per many submits
                while self.memory and len(chunk) < SPILL_CHUNK and self.over_bound(0.5, len(kept)):
                    write = self.memory.popleft()
                    if isinstance(write, Write):
                        chunk.append(write)
                        self.memory_bytes -= write.size
                    else:
                        kept.append(write)
                self.memory.extendleft(reversed(kept))
                self.in_transit += len(chunk)
            lines = []
            for write in chunk:
                try:
                    lines.append(encode_write(write).encode() + b"\n")
                except (TypeError, ValueError) as exc:
                    self.set_aside(write, exc)
            try:
                with self.file_lock:
                    self.spill.append(lines)
            except OSError as exc:  # a full disk: keep them in memory rather than lose them
                log.error("cannot spill %d database writes to %s: %s", len(lines), self.spill.path, exc)
                with self.changed:
                    self.memory.extendleft(reversed(chunk))
                    self.memory_bytes += sum(write.size for write in chunk)
                    self.in_transit -= len(chunk)
                    self.changed.notify_all()
                time.sleep(1)
                continue
            with self.changed:
                self.in_transit -= len(chunk)
                self.changed.notify_all()

    # ---- the writer thread -----------------------------------------------------------------------

    def take(self) -> tuple[list, list[int] | None]:
        """The next batch in order: from the spill file while it has writes, then from memory.
        Offsets come back for a batch from the file (None for one from memory). Empty when stopping."""
        with self.changed:
            while True:
                if self.spill is not None and self.spill.read_at < self.spill.end:
                    break
                if self.in_transit:  # older writes are on their way to the file: wait for them
                    self.changed.wait(0.05)
                    continue
                if self.memory:
                    gathering = self.gather_until - time.monotonic()
                    if gathering > 0 and len(self.memory) < BATCH_LIMIT and not self.stopping:
                        self.changed.wait(gathering)
                        continue
                    batch = [self.memory.popleft() for _ in range(min(BATCH_LIMIT, len(self.memory)))]
                    for write in batch:
                        if isinstance(write, Write):
                            self.memory_bytes -= write.size
                        else:
                            self.closures -= 1
                    return batch, None
                if self.stopping:
                    return [], None
                self.changed.wait()
        with self.file_lock:
            batch, offsets = self.spill.take(BATCH_LIMIT)
        return (batch, offsets) if batch else self.take()

    def write_forever(self, spill_path: Path, orphans: str) -> None:
        self.open_spill(spill_path, orphans)
        try:
            while True:
                batch, offsets = self.take()
                if not batch:
                    break
                try:
                    self.write_batch(batch)
                except Abandoned as abandoned:
                    self.keep_for_next_start(batch, offsets, abandoned.rest)
                    return
                self.gather_until = time.monotonic() + GATHER_S
                if offsets is not None:
                    with self.file_lock:
                        self.spill.commit(offsets[-1], len(batch))
        finally:
            with self.changed:
                self.finished = True
                self.changed.notify_all()
                self.overflowing.notify_all()
            self.discard_connection()

    def keep_for_next_start(self, batch: list, offsets: list[int] | None, rest: list) -> None:
        """Shutdown with the database away: the unwritten writes, in order, into the spill file."""
        with self.changed:
            self.finished = True  # the spiller takes nothing more from memory
            self.overflowing.notify_all()
            self.changed.wait_for(lambda: not self.in_transit, timeout=10)
            newer = (rest if offsets is None else []) + list(self.memory)
            self.memory.clear()
            self.memory_bytes = self.closures = 0
        closures = [write for write in newer if not isinstance(write, Write)]
        records = [write for write in newer if isinstance(write, Write)]
        if closures:
            log.error("%d database writes lost at shutdown (closures cannot wait on disk): %s",
                      len(closures), ", ".join(sorted({label_of(write) for write in closures})))
        if self.spill is None:
            log.error("%d database writes lost at shutdown: no spill folder", len(records))
            return
        with self.file_lock:
            if offsets is not None:
                written = len(batch) - len(rest)
                if written:
                    self.spill.commit(offsets[written - 1], written)
                self.spill.give_back()
            lines = self.spill.remaining_lines() + [encode_write(write).encode() + b"\n" for write in records]
            self.spill.rewrite(lines)
        log.warning("database unavailable at shutdown: %d writes kept in %s for the next start",
                    len(lines), self.spill.path)

    def write_batch(self, batch: list) -> None:
        """Write `batch` in one transaction, retrying while the database is away; one write at a
        time when the database answers but the batch fails. Raises Abandoned past the flush deadline."""
        attempt = 0
        while True:
            try:
                with database.atomic():
                    perform_all(batch)
                return
            except Exception as exc:
                failure = exc
            kind = failure_kind(failure)
            if kind == "data" or (kind == "connection" and self.database_answers()):
                break
            if attempt == 0:
                log.warning("database unavailable (%s); keeping %d writes and retrying", failure, len(batch))
            self.back_off(attempt, batch)
            attempt += 1
        if len(batch) == 1:
            self.set_aside(batch[0], failure)
            return
        log.warning("batch of %d writes failed (%s); writing them one by one", len(batch), failure)
        for index, write in enumerate(batch):
            try:
                self.write_batch([write])
            except Abandoned:
                raise Abandoned(batch[index:]) from None

    def database_answers(self) -> bool:
        """Is the database there now, on a fresh connection? (Then a failure was the batch's.)"""
        self.discard_connection()
        try:
            database.execute_sql("SELECT 1")
            return True
        except Exception:
            self.discard_connection()
            return False

    def discard_connection(self) -> None:
        """Forget this thread's connection, dead or in doubt; the next statement opens a new one."""
        try:
            database.close()
        except Exception:
            database.obj.dispose()

    def back_off(self, attempt: int, batch: list) -> None:
        """Wait before trying the database again; at shutdown, give up at the flush deadline."""
        self.discard_connection()
        until = time.monotonic() + min(RETRY_MAX_S, RETRY_FIRST_S * 2**attempt)
        with self.changed:
            while (left := until - time.monotonic()) > 0:
                if self.stopping and self.flush_deadline is not None and until > self.flush_deadline:
                    raise Abandoned(batch)
                self.changed.wait(left)

    def set_aside(self, write, error: BaseException) -> None:
        """A write the database refuses on its own: logged, and kept in a file an operator can replay."""
        log.error("database write %s set aside: %s", label_of(write), error)
        if not isinstance(write, Write) or self.set_aside_path is None:
            return
        try:
            line = json.dumps({"at": dt.datetime.now(dt.UTC).isoformat(), "error": str(error),
                               "write": json.loads(encode_write(write))}, separators=(",", ":"))
            self.set_aside_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.set_aside_path, "a") as out:
                out.write(line + "\n")
        except (OSError, TypeError, ValueError) as exc:
            log.error("cannot keep set-aside write %s in %s: %s", label_of(write), self.set_aside_path, exc)


class WriterShutdown:
    """Stops the writer after every other addon: mitmproxy calls `done` in chain order, and this
    addon is added to the end of the chain when the gateway starts running. It also counts the
    flows in flight (its hooks run after every other addon's for the same event), so the last
    flush waits for the usage and audit rows of requests still being answered."""

    name = "mindrouter_writer_shutdown"

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        # Weak: a flow mitmproxy let go of without a response or error hook is not waited for.
        self.in_flight: weakref.WeakValueDictionary[str, http.HTTPFlow] = weakref.WeakValueDictionary()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight[flow.id] = flow

    def response(self, flow: http.HTTPFlow) -> None:
        self.in_flight.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self.in_flight.pop(flow.id, None)

    async def done(self):
        deadline = time.monotonic() + ctx.options.writer_drain_s
        if self.in_flight:
            log.info("waiting for %d requests in flight before the last database flush", len(self.in_flight))
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning("%d requests still in flight at the last database flush", len(self.in_flight))
        await asyncio.to_thread(self.writer.stop, ctx.options.writer_flush_s)
