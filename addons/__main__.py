"""`python -m addons` (or `mindrouter-gateway`): the gateway as its own program (`addons/launcher.py`)."""

from __future__ import annotations

import importlib.util
import sys


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


def main(arguments: list[str] | None = None) -> None:
    skip_mitmproxy_default_addons()
    from addons.launcher import run_gateway

    run_gateway(list(sys.argv[1:] if arguments is None else arguments))


if __name__ == "__main__":
    main()
