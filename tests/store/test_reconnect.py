"""A MariaDB restart costs the store one failed statement at most, and no database call waits forever."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import peewee
import pytest

import migrations
from sim.stack import wait_until
from store.db import open_database
from store.models import User
from tests.store.private_mariadb import private_mariadb, requires_mariadbd

pytestmark = [pytest.mark.mariadb, requires_mariadbd]


def test_mariadb_connections_carry_connect_read_and_write_timeouts():
    db = open_database("mysql://root@127.0.0.1:3306/anything")
    assert {name: db.connect_params.get(name) for name in ("connect_timeout", "read_timeout", "write_timeout")} == {
        "connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}


def test_timeouts_in_the_url_win_over_the_defaults():
    db = open_database("mysql://root@127.0.0.1:3306/anything?read_timeout=120&connect_timeout=2")
    assert (db.connect_params["read_timeout"], db.connect_params["connect_timeout"]) == (120, 2)


def test_every_thread_gets_the_database_back_after_a_restart(tmp_path):
    """The gateway reads from worker threads and writes from its writer thread: each keeps a
    connection of its own, and each must reconnect once the server is back."""
    with private_mariadb(tmp_path / "mariadb") as server:
        server.create_database("mindrouter")
        db = open_database(server.url("mindrouter"))
        migrations.upgrade(db)
        with db.bind_ctx([User]):
            User.create(username="before", role="student")

            def count_users(results: list) -> None:
                try:
                    results.append(User.select().count())
                except peewee.PeeweeException as exc:
                    results.append(exc)

            worker_results: list = []
            worker = threading.Thread(target=count_users, args=(worker_results,))
            worker.start()
            worker.join()
            assert User.select().count() == 1 and worker_results == [1]

            server.stop()
            server.start()

            assert User.select().count() == 1  # this thread's connection died with the server
            with db.atomic():  # a transaction's BEGIN on a dead connection reconnects too
                User.create(username="after", role="student")
            worker_results.clear()
            worker = threading.Thread(target=count_users, args=(worker_results,))
            worker.start()
            worker.join()
            assert worker_results == [2]


def every_thread_stopped(pid: int) -> bool:
    """kill() returns once SIGSTOP is sent; each thread stops only when it next runs."""
    tasks = Path(f"/proc/{pid}/task")
    return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for task in tasks.iterdir())


def test_a_hung_server_fails_a_query_within_the_read_timeout(tmp_path):
    with private_mariadb(tmp_path / "mariadb") as server:
        server.create_database("mindrouter")
        db = open_database(server.url("mindrouter") + "?read_timeout=1")
        db.execute_sql("SELECT 1")
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: every_thread_stopped(server.process.pid), 5, "mariadbd stopped")
            started = time.monotonic()
            with pytest.raises(peewee.OperationalError):
                db.execute_sql("SELECT 1")
            assert time.monotonic() - started < 5
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
