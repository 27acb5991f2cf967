"""The gateway's addons as one addon to mitmproxy, each under a guard of its own.

One chain: mitmproxy hands every event to each addon it holds (through a coroutine and an error
guard per addon, and a flow's events twice: then as `update`), or walks an addon's children for
every event. With nineteen addons either cost more of a request's CPU than any addon of ours
(docs/benchmarks.md). `Chain` is one addon whose every hook calls, in order, only the addons that
have it.

A guard per addon: one addon's failing hook never skips the next addon's. An exception out of a
hook would leave the addons after it without that event; for the end of a flow that would skip the
slot release, the settle and the audit row of the request. So each flow hook runs under its own guard:

- a `requestheaders` or `request` hook that raises answers the caller 500 in its dialect (unless
  the flow already has an answer), so the flow never reaches the placeholder upstream, and the
  addons after it see an answered flow;
- any other flow hook that raises is logged, and the next addon's hook runs as usual.

Lifecycle hooks (load, configure, running, done) are not guarded: a failure there must stop the
gateway, as mitmproxy makes it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import mitmproxy.addonmanager  # noqa: F401  (these three register every hook mitmproxy dispatches)
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import hooks, http

from addons.context import context_of
from addons.replies import reply_error
from translators.errors import GatewayError

log = logging.getLogger(__name__)

REQUEST_HOOKS = ("requestheaders", "request")
FLOW_HOOKS = (*REQUEST_HOOKS, "responseheaders", "response", "error", "client_connected", "client_disconnected")
# mitmproxy warns about any addon that so much as has add_log (even None).
HOOKS = sorted(hooks.all_hooks.keys() - {"add_log"})


def answer_internal_error(flow: http.HTTPFlow, hook: str, addon: object) -> None:
    context = context_of(flow)
    request_id = context.request_id if context else "-"
    log.exception("request %s: %s.%s failed", request_id, type(addon).__name__, hook)
    if flow.response is None and flow.live and not flow.error:
        dialect = context.dialect if context else None
        reply_error(flow, dialect, GatewayError(500, f"internal error in the gateway (request {request_id})",
                                                code="internal_error"))


def failed(addon: object, hook: str, args: tuple) -> None:
    """What a flow hook's exception becomes: a 500 answer from a request hook, a log line from any other."""
    if hook in REQUEST_HOOKS:
        answer_internal_error(args[0], hook, addon)
    else:
        log.exception("%s.%s failed; the next addons still run", type(addon).__name__, hook)


def in_turn(hook: str, members: list[tuple[object, Callable]]) -> Callable:
    """Several addons' methods for one hook, called in the addons' order (a coroutine's awaited before the
    next); for a flow hook, each under its own guard."""
    guarded = hook in FLOW_HOOKS
    if not guarded and len(members) == 1:
        return members[0][1]
    if not any(inspect.iscoroutinefunction(method) for _, method in members):
        def call(*args):
            for addon, method in members:
                try:
                    method(*args)
                except Exception:
                    if not guarded:
                        raise
                    failed(addon, hook, args)
        return call

    async def call_async(*args):
        for addon, method in members:
            try:
                result = method(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                if not guarded:
                    raise
                failed(addon, hook, args)
    return call_async


class Chain:
    """The gateway's addons as the one addon mitmproxy holds: each hook mitmproxy dispatches is a plain
    attribute, the addons' guarded methods for it in their order, or None where no addon has it."""

    name = "mindrouter"

    def __init__(self, *members: object) -> None:
        for hook in HOOKS:
            found = [(member, method) for member in members if (method := getattr(member, hook, None))]
            setattr(self, hook, in_turn(hook, found) if found else None)
