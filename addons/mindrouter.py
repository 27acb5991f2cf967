"""The gateway: `mitmdump -s addons/mindrouter.py`.

A thin shim, so the journey of a request reads in one place: the addons run in this order for
every request, as one chain mitmproxy holds, each under a guard of its own (`addons/guard.py`), so
one failing hook never skips the slot release, settle or audit of the addons after it. Everything
with state lives in the `addons` package, which a script reload does not re-import.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.aliases import Aliases
from addons.auth import Auth
from addons.body_limit import BodyLimit
from addons.connections import ConnectionLimit, ListenBacklog
from addons.drain import Drain
from addons.gate import Gate
from addons.guard import Chain
from addons.image_fetch import ImageFetch
from addons.local import Local
from addons.policy import Policy
from addons.record import Record
from addons.registry import BackendRegistry
from addons.responses import ResponsesStore
from addons.routing import Routing
from addons.settings import Settings
from addons.translate import Translate
from addons.upstream import Upstream
from addons.write_through import WriteThrough
from addons.writer import StoreWriter

settings = Settings()
writer = StoreWriter()
registry = BackendRegistry(writer)
gate = Gate(registry, writer, settings.environment.fairness_window_s, settings.environment.redis_url)

addons = [Chain(
    settings,  # mitmproxy.conf, environment, schema check
    Drain(gate),  # on shutdown, first to stop: refuse new and queued requests, let running ones finish
    writer,  # background database writes
    registry,  # backends from the database, polled for health and models
    ListenBacklog(),  # a burst of connections waits to be accepted, not reset
    ConnectionLimit(),  # a ceiling on open client connections
    Routing(settings.environment.admin_app_url),  # what the path is; dashboards go to the admin app
    BodyLimit(),  # bodies over the limit refused unread; chunked ones read to a bound first
    Auth(),  # API key → Principal
    Local(registry),  # health, metrics and model catalogs answered here
    Translate(),  # parse and check the caller's body
    Aliases(registry),  # a model alias an admin defined becomes the model it names
    Policy(writer, settings.environment, registry),  # rate limit per key, concurrency per user, token budget
    ResponsesStore(writer),  # /v1/responses: continue a stored conversation, keep answers, GET and DELETE them
    ImageFetch(),  # image URLs fetched, only for requests Policy admitted
    gate,  # fair-share wait for a backend slot
    Upstream(registry, gate),  # to the backend in its dialect, failing over before the first byte
    WriteThrough(),  # a stream's pieces straight onto the caller's connection, past the relay
    Record(writer, settings.environment.artifact_storage_path),  # audit row, bodies, images
)]
