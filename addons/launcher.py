"""The gateway's own program (`python -m addons`, `mindrouter-gateway`), mitmdump's command line.

It embeds mitmproxy's Master with only what a reverse proxy needs (core, proxy server, layer
selection, TLS settings, start-up error check) and the gateway's addons; none of mitmdump's ~30
default addons (flow export, playback, anticache, ...) sees a hook. The gateway's addons are added
after the command line is read and before any listener opens, so `mitmproxy.conf` and `-p`/`--set`
apply as with `mitmdump -s addons/mindrouter.py`, with no moment when a plain proxy listens. The
event loop is uvloop's (docs/benchmarks.md has the measured gain); `--asyncio-loop` keeps Python's.
`addons/__main__.py` imports it once mitmproxy's addons package is bare (only the addons named here load).
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import exceptions, hooks, master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.tools import cmdline
from mitmproxy.tools.main import run

ASYNCIO_LOOP_FLAG = "--asyncio-loop"

log = logging.getLogger(__name__)


class GatewayMaster(master.Master):
    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts, with_termlog=True)
        self.addons.add(
            core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        )

    async def run(self) -> None:
        from addons.mindrouter import addons  # the options of the command line are set by now

        self.addons.add(*addons)
        # As mitmproxy's script loader does for a script's addons: each one sees every option once, the
        # command line's included (they were applied while it was not yet in the chain).
        try:
            for addon in addons:
                self.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(self.options.keys())))
        except exceptions.OptionsError as error:
            log.error("%s", error)  # ErrorCheck stops the start-up and prints it
        # mitmproxy opens the listeners before the `running` hooks, and TlsConfig makes its certificate store
        # only in its own (a FIXME there): a request in between fails in its `request` hook and stops the
        # start-up. Make the store before anything listens.
        self.addons.invoke_addon_sync(self.addons.get("tlsconfig"), hooks.ConfigureHook({"confdir"}))
        await super().run()


def run_gateway(arguments: list[str]) -> None:
    if ASYNCIO_LOOP_FLAG in arguments:
        arguments.remove(ASYNCIO_LOOP_FLAG)
    else:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    run(GatewayMaster, cmdline.mitmdump, arguments)
