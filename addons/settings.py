"""Gateway configuration: the environment (the operator contract) and `mitmproxy.conf`.

`mitmdump -s addons/mindrouter.py` alone must come up as the gateway, so this addon reads
`mitmproxy.conf` (mitmproxy's YAML option format) when it loads and applies every option the
command line did not set: `-p` and `--set` win over the file, as an operator expects.

mitmproxy loads `-s` scripts only after its first listener is up (in the mode and port of the
command line), so once running, the listeners are rebuilt with the file's mode and port.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import ctx, exceptions, optmanager

import migrations
from store import init_database
from store.db import database_url
from store.environment import load_dotenv

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF = REPO_ROOT / "mitmproxy.conf"

log = logging.getLogger(__name__)
# Options of mitmdump's own addons that the lean launcher (`python -m addons`) leaves out: it prints no flows.
MITMDUMP_ONLY_OPTIONS = frozenset({"flow_detail"})
# mitmproxy sets the root logger to DEBUG: peewee would log every SQL statement, httpcore trace every
# socket operation and httpx write a line per upstream request, all on the event loop's thread.
logging.getLogger("peewee").setLevel(logging.INFO)
logging.getLogger("httpcore").setLevel(logging.WARNING)
logging.getLogger("httpx").setLevel(logging.WARNING)
# mitmproxy's proxy server writes several lines per connection and flow (connect, stream, disconnect): on
# the event loop, for every request. Its warnings and errors still show; the audit log has every request.
logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Environment:
    """The variables of DESIGN section 3 that the gateway reads."""

    database_url: str
    admin_app_url: str
    redis_url: str | None
    artifact_storage_path: str
    default_token_budget: int
    fairness_window_s: float

    @classmethod
    def from_environ(cls) -> Environment:
        load_dotenv()
        return cls(
            database_url=database_url(),
            admin_app_url=os.environ.get("ADMIN_APP_URL", "http://127.0.0.1:8001"),
            redis_url=os.environ.get("REDIS_URL") or None,
            artifact_storage_path=os.environ.get("ARTIFACT_STORAGE_PATH", "data/artifacts"),
            default_token_budget=int(os.environ.get("DEFAULT_TOKEN_BUDGET", "100000")),
            fairness_window_s=float(os.environ.get("SCHEDULER_FAIRNESS_WINDOW", "300")),
        )


def cannot_start(reason: str) -> None:
    print(f"mindrouter: cannot start: {reason}", file=sys.stderr)
    sys.stderr.flush()
    # mitmproxy logs an exception raised while a script loads and goes on serving without the
    # script: an open proxy with no auth. Leave instead, before any listener takes a request.
    os._exit(2)


class Settings:
    """Applies mitmproxy.conf and checks the database schema before the proxy starts serving."""

    def __init__(self) -> None:
        self.environment = Environment.from_environ()

    def load(self, loader):
        loader.add_option(
            "mindrouter_conf", str, str(DEFAULT_CONF),
            "mitmproxy options file the gateway applies at start-up; command-line options win.",
        )
        ctx.options.process_deferred()  # a --set mindrouter_conf=... waits there until now
        self.refuse_options_set_twice()
        self.apply_conf_file(ctx.options.mindrouter_conf)
        self.require_current_schema()

    @staticmethod
    def refuse_options_set_twice() -> None:
        """None of our options takes several values: mitmproxy, given one twice (`--set a=1 --set a=2`),
        fails while loading the addon that declares it and never starts the others, with no word of why."""
        twice = sorted(name for name, value in ctx.options.deferred.items() if len(getattr(value, "val", ())) > 1)
        if twice:
            cannot_start(f"options set more than once: {', '.join(twice)} (give each once)")

    def apply_conf_file(self, path: str) -> None:
        conf = Path(path)
        if not conf.is_file():
            raise exceptions.OptionsError(f"mindrouter_conf: no such file {path!r}")
        values = optmanager.parse(conf.read_text())
        untouched = {
            name: value
            for name, value in values.items()
            if name not in ctx.options.deferred and not (name in ctx.options and ctx.options.has_changed(name))
            and (name in ctx.options or name not in MITMDUMP_ONLY_OPTIONS)
        }
        ctx.options.update_defer(**untouched)

    def require_current_schema(self) -> None:
        """Refuse to start on a database the migrations have not brought up to date."""
        try:
            db = init_database(self.environment.database_url)
            migrations.require_current_schema(db)
            db.close()
        except Exception as exc:  # any failure here means the gateway cannot serve
            cannot_start(str(exc))


    def running(self):
        unknown = sorted(ctx.options.deferred)
        if unknown:
            log.error("unknown options: %s (see `mitmdump -s addons/mindrouter.py --options`)", ", ".join(unknown))
            ctx.master.shutdown()
            return
        ctx.options.update(mode=list(ctx.options.mode), listen_port=ctx.options.listen_port)
