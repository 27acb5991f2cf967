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
import gc
import inspect
import logging
from collections.abc import Callable

from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, termlog, tlsconfig
from mitmproxy.tools import cmdline
from mitmproxy.tools.main import run

ASYNCIO_LOOP_FLAG = "--asyncio-loop"
# Python's cyclic garbage collector looks at its youngest objects after every 700 new ones: several times
# a request, and at the gateway's whole heap every few hundred requests, 7 % of a request's CPU and
# most of its p99 (docs/benchmarks.md). Every 10 000 keeps a collection's pause short and what waits for it small.
YOUNG_COLLECTION_THRESHOLD = 10_000

log = logging.getLogger(__name__)


class HookTable(addonmanager.AddonManager):
    """mitmproxy's addon manager, but an event goes only to the addons that have its hook.

    mitmproxy's own walks every addon of the chain (and each one's children) for every event, each
    under a coroutine and an error guard of its own, and follows every flow event with an `update`
    event that no addon here has: with seven addons, of which only the gateway's chain has a flow
    hook, those walks cost a request more CPU than most of the gateway's own addons
    (docs/benchmarks.md). Here each hook's handlers are looked up at its first event and kept until
    the chain changes (add, remove, clear; the gateway's addons grow no hooks later). An event still
    does what it did: the addons in order, each under mitmproxy's error guard (a failing one is
    logged and the next still runs), until one raises AddonHalt.
    """

    def __init__(self, master: master.Master) -> None:
        super().__init__(master)
        self.handlers: dict[str, list[list[Callable]]] = {}  # hook → each addon's callables for it, in chain order

    def register(self, addon):
        self.handlers.clear()
        return super().register(addon)

    def remove(self, addon) -> None:
        super().remove(addon)
        self.handlers.clear()

    def clear(self) -> None:
        super().clear()
        self.handlers.clear()

    def handlers_of(self, event: hooks.Hook) -> list[list[Callable]]:
        if (found := self.handlers.get(event.name)) is None:
            found = self.handlers[event.name] = [
                callables for addon in self.chain if (callables := [func for _, func in self._iter_hooks(addon, event)])
            ]
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        if not (handlers := self.handlers_of(event)):
            return
        args = event.args()
        for callables in handlers:
            try:
                for func in callables:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except Exception:
                with addonmanager.safecall():  # logs it as mitmproxy does (or lets an OptionsError through)
                    raise


class ReverseProxyTlsConfig(tlsconfig.TlsConfig):
    """mitmproxy's TLS settings without their `request` hook, which serves the revocation list that an
    intercepting proxy writes into the certificates it copies from an upstream's, and asked the CA
    its serial number for every request's path (1 % of a request's CPU): a gateway hands its callers
    no upstream's certificate, so no such list is ever asked for."""

    name = "tlsconfig"
    request = None


class GatewayMaster(master.Master):
    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts)
        self.addons = HookTable(self)  # before any addon is added
        self._termlog_addon = termlog.TermLog()  # as Master(with_termlog=True) adds it, to this manager
        self.addons.add(
            self._termlog_addon,
            core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), ReverseProxyTlsConfig(),
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
        # only in its own (a FIXME there): a connection in between that TlsConfig sees fails and stops the
        # start-up. Make the store before anything listens.
        self.addons.invoke_addon_sync(self.addons.get("tlsconfig"), hooks.ConfigureHook({"confdir"}))
        collect_garbage_less_often()
        await super().run()


def collect_garbage_less_often() -> None:
    """What start-up made (modules, options, caches) lives as long as the process: frozen, no collection
    walks it again; and the youngest objects are collected every YOUNG_COLLECTION_THRESHOLD new ones."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def run_gateway(arguments: list[str]) -> None:
    if ASYNCIO_LOOP_FLAG in arguments:
        arguments.remove(ASYNCIO_LOOP_FLAG)
    else:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    run(GatewayMaster, cmdline.mitmdump, arguments)
