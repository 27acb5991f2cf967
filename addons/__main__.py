"""`python -m addons` (or `mindrouter-gateway`): the gateway as its own program (`addons/launcher.py`)."""

from __future__ import annotations

import importlib.util
import os
import sys

DEBUG_CHECKS_FLAG = "--debug-checks"


def without_debug_checks() -> None:
    """Start again under `python -O` (same process, same command line) unless `--debug-checks` is given.

    mitmproxy keeps its debug-only checks under `__debug__`, meant to be compiled out: a type check of
    every field of every Request and Response it builds, an event-type check around each step of its
    layers' state machines, a test-name lookup in the environment for every task. Under `-O` a
    non-streamed request costs 10 to 20 % less CPU (docs/benchmarks.md). The assert statements `-O` drops
    are mitmproxy's own invariant checks; the gateway's code has none (tests/unit/gateway/test_no_asserts.py).
    """
    if sys.flags.optimize or DEBUG_CHECKS_FLAG in sys.argv:
        return
    os.execv(sys.executable, [sys.executable, "-O", *sys.orig_argv[1:]])


def skip_mitmproxy_default_addons() -> None:
    """Make `mitmproxy.addons` a bare package, so that only the addons the gateway runs are imported.

    The package's `__init__` imports all of mitmdump's ~30 default addons (and with its onboarding app
    Flask, Jinja2 and click) as soon as any one of them is imported, and `mitmproxy.master` imports one:
    15 MB of every gateway process's memory (docs/benchmarks.md), for code the gateway never runs. A
    bare package still imports each addon it is asked for (`from mitmproxy.addons import core`); only
    its `default_addons()`, which mitmdump calls and the gateway does not, is missing. It must run
    before anything imports mitmproxy's master, and does nothing once the package is imported.
    """
    if "mitmproxy.addons" not in sys.modules:
        sys.modules["mitmproxy.addons"] = importlib.util.module_from_spec(importlib.util.find_spec("mitmproxy.addons"))


def main() -> None:
    without_debug_checks()
    skip_mitmproxy_default_addons()
    from addons.launcher import run_gateway

    run_gateway([argument for argument in sys.argv[1:] if argument != DEBUG_CHECKS_FLAG])


if __name__ == "__main__":
    main()
