"""The typed state one request carries through the addons, kept in `flow.metadata`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import connection, http

if TYPE_CHECKING:
    from addons.auth import Principal
    from addons.policy import Admission
    from addons.registry import BackendView
    from addons.splice import Splice
    from translators.canonical import CanonicalRequest
    from translators.pipeline import ResponseTranslator

CONTEXT_KEY = "mindrouter"
# The caller's address when a request reached the gateway through this process's body sink (addons/body_limit.py).
CALLER_ADDRESS_KEY = "mindrouter.caller_address"


@dataclass(frozen=True)
class Route:
    """What a path is: who answers it, in which dialect, and whether it needs a key."""

    kind: str  # inference | catalog | health | admin
    dialect: str | None = None  # openai | ollama (None for health and admin paths)
    endpoint: str = ""  # the client path, e.g. /v1/chat/completions
    needs_key: bool = True


@dataclass
class RequestContext:
    request_id: str
    route: Route
    client_address: str
    received_at: float = field(default_factory=time.monotonic)
    received_wall: float = field(default_factory=time.time)
    principal: Principal | None = None
    canonical: CanonicalRequest | None = None
    translator: ResponseTranslator | None = None
    # (backend id, whether it serves the caller's API itself, its path and body): built once per backend
    prepared: tuple[int, bool, tuple[str, bytes]] | None = None
    model: str | None = None  # as the caller named it
    model_label: str = "unknown"  # for metrics: the model once a backend is known to serve it, never the caller's string
    stream: bool = False
    backend: BackendView | None = None
    queued_at: float | None = None
    granted_at: float | None = None
    sent_at: float | None = None  # the first attempt upstream
    first_byte_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    client_body: bytes = b""  # the request as the caller sent it, for the audit log
    delivered: list[bytes] = field(default_factory=list)  # streamed bytes as the caller got them
    splice: Splice | None = None  # a streamed answer's way from its backend, once one answers
    recorded: bool = False
    # Policy: what admission took (rate, slot, reservation), so settling gives it back exactly once.
    admission: Admission | None = None

    @property
    def dialect(self) -> str | None:
        return self.route.dialect


def context_of(flow: http.HTTPFlow) -> RequestContext | None:
    return flow.metadata.get(CONTEXT_KEY)


def caller_address(flow: http.HTTPFlow) -> str:
    if CALLER_ADDRESS_KEY in flow.metadata:
        return flow.metadata[CALLER_ADDRESS_KEY]
    return flow.client_conn.peername[0] if flow.client_conn.peername else ""


def client_left(flow: http.HTTPFlow) -> bool:
    """The caller closed its connection (mitmproxy marks that before its client_disconnected hook)."""
    client: connection.Client = flow.client_conn
    return client.timestamp_end is not None


def drop(flow: http.HTTPFlow) -> None:
    """Never send this flow on (its caller left): kill it, unless mitmproxy already did when the caller's
    connection closed (then the flow is no longer killable). Either way its error hooks give its slot back."""
    if flow.killable:
        flow.kill()
