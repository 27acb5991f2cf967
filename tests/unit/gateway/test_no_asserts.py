"""The gateway runs under `python -O` (addons/__main__.py), which drops every assert statement: a check
written as one in the gateway's code would never run there."""

from __future__ import annotations

import ast

import pytest

from sim.stack import REPO_ROOT

GATEWAY_PACKAGES = ("addons", "translators", "scheduler", "store")


@pytest.mark.parametrize("package", GATEWAY_PACKAGES)
def test_the_gateway_code_has_no_assert_statement(package):
    sources = sorted((REPO_ROOT / package).rglob("*.py"))
    assert sources
    asserts = [f"{source.relative_to(REPO_ROOT)}:{node.lineno}"
               for source in sources for node in ast.walk(ast.parse(source.read_text(), str(source)))
               if isinstance(node, ast.Assert)]
    assert asserts == []
