"""The private server's harness never hands a test someone else's server."""

from __future__ import annotations

import pytest

from tests.store.private_mariadb import PortTaken, PrivateMariaDB, private_mariadb, requires_mariadbd

pytestmark = [pytest.mark.mariadb, requires_mariadbd]


def test_a_server_that_finds_its_port_answered_by_another_says_so(tmp_path):
    with private_mariadb(tmp_path / "first") as first:
        second = PrivateMariaDB(tmp_path / "second", first.port)
        second.install()
        with pytest.raises(PortTaken):
            second.start()
        assert second.process.poll() is not None
        assert first.answering_datadir() == f"{first.datadir}/"
