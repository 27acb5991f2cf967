"""Which image URLs the gateway refuses to fetch on a caller's behalf."""

import asyncio

import pytest

from addons.images import is_internal


@pytest.mark.parametrize(("host", "internal"), [
    ("127.0.0.1", True), ("localhost", True), ("10.1.2.3", True), ("192.168.0.10", True),
    ("169.254.169.254", True), ("::1", True), ("8.8.8.8", False), ("2001:4860:4860::8888", False),
])
def test_loopback_private_and_link_local_addresses_are_internal(host, internal):
    assert asyncio.run(is_internal(host)) is internal
