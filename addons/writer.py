"""The gateway's only database writer: one thread that batches writes, so no hook ever waits on the database."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from store import database

log = logging.getLogger(__name__)

BATCH_LIMIT = 500
_STOP = object()


class StoreWriter:
    """Runs submitted write functions in order on a background thread, a batch per transaction."""

    def __init__(self) -> None:
        self.pending: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None

    def running(self):
        self.thread = threading.Thread(target=self.write_forever, name="mindrouter-store-writer", daemon=True)
        self.thread.start()

    def done(self):
        """Flush everything still queued before the process exits."""
        if self.thread:
            self.pending.put(_STOP)
            self.thread.join(timeout=30)

    def submit(self, write: Callable[[], None]) -> None:
        self.pending.put(write)

    def write_forever(self) -> None:
        stopping = False
        while not stopping:
            batch = [self.pending.get()]
            while len(batch) < BATCH_LIMIT:
                try:
                    batch.append(self.pending.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [write for write in batch if write is not _STOP]
            self.write_batch(batch)
        database.close()

    def write_batch(self, batch: list[Callable[[], None]]) -> None:
        try:
            with database.atomic():
                for write in batch:
                    write()
        except Exception:
            log.exception("batch of %d writes failed; retrying them one by one", len(batch))
            for write in batch:
                try:
                    with database.atomic():
                        write()
                except Exception:
                    log.exception("write dropped after retry")
