"""A MariaDB server of a test's own, to stop and start at will.

The shared server on 127.0.0.1:3306 (`.ci/prepare`) serves every other test on both xdist workers,
so a test about a database restart starts its own `mariadbd` from the same Debian binaries, in a
temporary data directory, on a free port; `--skip-grant-tables` lets root in without a password.
A port that another process takes before `mariadbd` binds it is given up for another, and a server
that answers on the port is trusted only once it names this test's data directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pymysql
import pytest

from sim.stack import free_port

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db")

requires_mariadbd = pytest.mark.skipif(
    not (Path(MARIADBD).exists() and INSTALL_DB), reason="needs mariadbd and mariadb-install-db (Debian mariadb-server)"
)


class PortTaken(RuntimeError):
    """Another process holds the port this server was to listen on."""


class PrivateMariaDB:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.datadir = directory / "data"
        self.process: subprocess.Popen | None = None
        self.log = directory / "mariadbd.log"

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def install(self) -> None:
        subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}", "--user=root", "--skip-test-db",
             "--auth-root-authentication-method=normal"],
            check=True, capture_output=True, timeout=60,
        )

    def start(self, timeout: float = 20) -> None:
        args = [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.directory / 'sock'}",
                f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-grant-tables",
                f"--pid-file={self.directory / 'mariadbd.pid'}", f"--log-error={self.log}",
                "--innodb-buffer-pool-size=32M", "--skip-name-resolve"]
        if os.geteuid() == 0:
            args.append("--user=root")
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                answering = self.answering_datadir()
            except pymysql.err.OperationalError as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text(errors="replace") if self.log.exists() else ""
                    failure = PortTaken if "Address already in use" in log else RuntimeError
                    raise failure(f"mariadbd did not start on port {self.port}:\n{log[-3000:]}") from exc
                time.sleep(0.05)
                continue
            if answering != f"{self.datadir}/":
                self.stop()
                raise PortTaken(f"port {self.port} is answered by another server, of {answering}")
            return

    def answering_datadir(self) -> str:
        connection = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1, read_timeout=2)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT @@datadir")
                return cursor.fetchone()[0]
        finally:
            connection.close()

    def stop(self, timeout: float = 30) -> None:
        """A clean shutdown (SIGTERM), as an operator's restart does."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def create_database(self, name: str) -> None:
        connection = pymysql.connect(host="127.0.0.1", port=self.port, user="root")
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        connection.close()


@contextmanager
def private_mariadb(directory: Path):
    """A freshly installed server on a free port (`server.port`), stopped (and its files removed) afterwards."""
    server = PrivateMariaDB(directory, free_port())
    server.install()
    for attempt in range(3):
        try:
            server.start()
            break
        except PortTaken:
            if attempt == 2:
                raise
            server.port = free_port()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory / "data", ignore_errors=True)
