"""A guard per addon: one addon's failing hook never skips the next addon's.

mitmproxy runs a script's addons as children of the script, under one error guard: when one
child's hook raises, the children after it never see that event. For the end of a flow that
would skip the slot release, the settle and the audit row of the request. So every addon in
`addons/mindrouter.py` is wrapped here, and each of its flow hooks runs under its own guard:

- a `requestheaders` or `request` hook that raises answers the caller 500 in its dialect (unless
  the flow already has an answer), so the flow never reaches the placeholder upstream, and the
  addons after it see an answered flow;
- any other flow hook that raises is logged, and the next addon's hook runs as usual.

Lifecycle hooks (load, configure, running, done) are not guarded: a failure there must stop the
gateway, as mitmproxy makes it.
"""

from __future__ import annotations

import functools
import inspect
import logging

import mitmproxy.addonmanager  # noqa: F401  (these two register every hook mitmproxy dispatches)
import mitmproxy.proxy.layers  # noqa: F401
from mitmproxy import hooks, http

from addons.context import context_of
from addons.replies import reply_error
from translators.errors import GatewayError

log = logging.getLogger(__name__)

REQUEST_HOOKS = ("requestheaders", "request")
# mitmproxy warns about any addon that so much as has these (even None).
DEPRECATED_HOOKS = frozenset({"add_log"})
FLOW_HOOKS = (*REQUEST_HOOKS, "responseheaders", "response", "error", "client_connected", "client_disconnected")


def answer_internal_error(flow: http.HTTPFlow, hook: str, addon: object) -> None:
    context = context_of(flow)
    request_id = context.request_id if context else "-"
    log.exception("request %s: %s.%s failed", request_id, type(addon).__name__, hook)
    if flow.response is None and flow.live and not flow.error:
        dialect = context.dialect if context else None
        reply_error(flow, dialect, GatewayError(500, f"internal error in the gateway (request {request_id})",
                                                code="internal_error"))


def guarded_hook(addon: object, hook: str, method):
    def failed(args) -> None:
        if hook in REQUEST_HOOKS:
            answer_internal_error(args[0], hook, addon)
        else:
            log.exception("%s.%s failed; the next addons still run", type(addon).__name__, hook)

    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def guard(*args):
            try:
                return await method(*args)
            except Exception:
                failed(args)
    else:
        @functools.wraps(method)
        def guard(*args):
            try:
                return method(*args)
            except Exception:
                failed(args)
    return guard


class Guarded:
    """An addon as mitmproxy sees it, with each flow hook under its own guard; everything else is the addon's.

    Every hook name mitmproxy dispatches is a plain attribute here (the guarded flow hook, the addon's own
    method, or None), as is `addons` (no children): mitmproxy looks each one up on every addon for every
    event, and a lookup that fell through to `__getattr__` would cost a call and an AttributeError each time."""

    def __init__(self, addon: object) -> None:
        self.addon = addon
        self.name = getattr(addon, "name", type(addon).__name__.lower())  # mitmproxy's name for the addon
        self.addons: list = []
        for hook in hooks.all_hooks.keys() - DEPRECATED_HOOKS:
            method = getattr(addon, hook, None)
            setattr(self, hook, guarded_hook(addon, hook, method) if method and hook in FLOW_HOOKS else method)

    def __getattr__(self, name: str):
        return getattr(self.addon, name)


def guarded(*addons: object) -> list[Guarded]:
    return [Guarded(addon) for addon in addons]
