"""Fixtures shared by every tier: fresh databases on SQLite and on the MariaDB server."""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlparse

import pymysql
import pytest

import migrations
from store import init_database

# The MariaDB server CI starts (root, empty password, on loopback); override to point elsewhere.
MYSQL_SERVER_URL = os.environ.get("MINDROUTER_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/")


def _mysql_admin_connection():
    url = urlparse(MYSQL_SERVER_URL)
    return pymysql.connect(
        host=url.hostname, port=url.port or 3306, user=url.username or "root", password=url.password or ""
    )


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mindrouter.db'}"


@pytest.fixture
def mysql_url():
    """A new, empty MariaDB database, dropped after the test."""
    name = f"mindrouter_test_{secrets.token_hex(4)}"
    conn = _mysql_admin_connection()
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    server = urlparse(MYSQL_SERVER_URL)
    yield f"mysql://{server.netloc}/{name}"
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def any_database_url(request) -> str:
    """Runs the test once on SQLite and once on MariaDB."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "mysql_url")


@pytest.fixture
def migrated_db(any_database_url):
    """The shared store bound to a fresh, fully migrated database of either kind."""
    db = init_database(any_database_url)
    migrations.upgrade(db)
    yield db
    db.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Simulated Ollama and vLLM nodes, the admin app and the gateway, started as an operator would."""
    from tests.support.cluster import NO_LIMITS, start_cluster

    work_dir = tmp_path_factory.mktemp("cluster")
    # Tests serve image URLs from loopback, which the gateway refuses by default.
    running = start_cluster(work_dir, f"sqlite:///{work_dir / 'mindrouter.db'}",
                            gateway_options=("image_fetch_allow_internal=true", *NO_LIMITS))
    yield running
    running.stop()
