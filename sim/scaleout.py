"""Several gateway processes behind HAProxy on one machine, sharing the database and Redis.

`make run-cluster` runs it (`python -m sim.scaleout`): MariaDB and Redis as `make services` starts
them, the two simulated nodes and the admin app of `sim.stack`, one gateway process per core on
ports of their own, and Debian's HAProxy on the README's gateway port in front of them. HAProxy
sends each request to the gateway with the fewest open connections among those whose `/readyz`
answers 200, so a gateway that is stopping (its `/readyz` says 503 at once) gets no new requests
while it finishes the ones it has. The tests start the same thing on free ports.
"""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sim.stack import (
    GATEWAY,
    REPO_ROOT,
    Service,
    Stack,
    free_port,
    run_command,
    serve_until_stopped,
    start_stack,
    wait_until,
)

HAPROXY = "/usr/sbin/haproxy"
# HAProxy asks every gateway's /readyz this often; two failures in a row take it out of the rotation
# (one slow answer on a busy machine does not), two successes put it back. A stopping gateway keeps
# serving new requests for `shutdown_drain_s`, which must cover two check intervals and the request
# that may be on its way meanwhile.
CHECK_INTERVAL_MS = 500
DRAIN_S = 2


def haproxy_config(listen_port: int, gateway_ports: list[int], stats_socket: Path) -> str:
    """HAProxy in front of the gateways: least connections (requests hold a connection while they stream
    or wait in the fair queue), health-checked on /readyz, no timeout a long generation could hit.

    When no gateway is ready, requests go to them all the same (backup servers), to be answered in the
    caller's dialect. A request is sent again to another gateway only when the first could not be reached
    at all (`retry-on conn-failure`): one that a gateway took is never replayed, so it is audited and
    charged once.
    """
    servers = "\n".join(f"    server gw{n} 127.0.0.1:{port} check" for n, port in enumerate(gateway_ports, 1))
    # Not ready is about what a gateway can serve (its database, its backends), which every gateway shares:
    # when none is ready, the requests still go to one, which answers in the caller's dialect (503 with
    # Retry-After) rather than HAProxy's own HTML page. Unchecked backups are used only then.
    servers += "".join(f"\n    server gw{n}-anyway 127.0.0.1:{port} backup"
                       for n, port in enumerate(gateway_ports, 1))
    return f"""\
global
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 3600s
    timeout server 3600s
    timeout http-request 30s
    timeout http-keep-alive 10s
    timeout check 2s
    retries 2
    option redispatch
    retry-on conn-failure

frontend mindrouter
    bind 127.0.0.1:{listen_port}
    default_backend gateways

backend gateways
    balance leastconn
    option allbackups
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {CHECK_INTERVAL_MS}ms fall 2 rise 2
{servers}
"""


@dataclass
class ScaledStack(Stack):
    """A `Stack` whose `gateway_url` is HAProxy's; `gateways` are the processes behind it, in order."""

    gateways: list[Service] = field(default_factory=list)
    gateway_urls: list[str] = field(default_factory=list)


def start_gateway(stack: Stack, name: str, port: int, options: tuple[str, ...], log_dir: Path) -> Service:
    gateway = Service(name, [*GATEWAY, "-p", str(port),
                             *(arg for option in options for arg in ("--set", option))], stack.env, log_dir)
    stack.services.append(gateway)
    gateway.wait_http(f"http://127.0.0.1:{port}/healthz", accept=lambda r: r.status_code == 200)
    return gateway


def start_scaled_stack(log_dir: Path, env: dict[str, str], ports: dict[str, int], gateways: int,
                       gateway_options: tuple[str, ...] = (), **stack_options) -> ScaledStack:
    """`sim.stack` with `gateways` gateway processes behind HAProxy on `ports['gateway']`.

    `env` must name a shared REDIS_URL; `ports` needs the keys of `start_stack` ("gateway" is HAProxy's).
    """
    if not Path(HAPROXY).exists():
        raise RuntimeError(f"{HAPROXY} not found: `apt-get install haproxy` (.ci/prepare installs it)")
    options = (f"shutdown_drain_s={DRAIN_S}", *gateway_options)
    gateway_ports = [free_port() for _ in range(gateways)]
    first = start_stack(log_dir, env, {**ports, "gateway": gateway_ports[0]}, options, **stack_options)
    stack = ScaledStack(**{name: getattr(first, name) for name in Stack.__dataclass_fields__})
    stack.gateways = [first.service("gateway")]
    try:
        for n, port in enumerate(gateway_ports[1:], 2):
            stack.gateways.append(start_gateway(stack, f"gateway-{n}", port, options, log_dir))
        stack.gateway_urls = [f"http://127.0.0.1:{port}" for port in gateway_ports]
        for url in stack.gateway_urls:  # each reads the backends the first registered from the database
            wait_until(lambda u=url: httpx.get(f"{u}/readyz", timeout=2).status_code == 200, 30, f"{url}/readyz")
        config = log_dir / "haproxy.cfg"
        config.write_text(haproxy_config(ports["gateway"], gateway_ports, log_dir / "haproxy.sock"))
        run_command([HAPROXY, "-c", "-q", "-f", str(config)], {})
        haproxy = Service("haproxy", [HAPROXY, "-db", "-f", str(config)], {}, log_dir)
        stack.services.append(haproxy)
        stack.gateway_url = f"http://127.0.0.1:{ports['gateway']}"
        haproxy.wait_http(f"{stack.gateway_url}/readyz", accept=lambda r: r.status_code == 200)
    except BaseException:
        stack.stop()
        raise
    return stack


def main() -> None:
    from store.environment import load_dotenv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=os.cpu_count() or 1,
                        help="gateway processes behind HAProxy (default: one per core)")
    args = parser.parse_args()
    load_dotenv(REPO_ROOT / ".env")
    env = {
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_hex(32),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "mysql://root@127.0.0.1:3306/mindrouter"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    ports = {"gateway": 8000, "admin": 8001, "ollama": 11435, "vllm": 8100}
    print(f"starting the simulated nodes, the admin app, {args.gateways} gateways and HAProxy ...", flush=True)
    stack = start_scaled_stack(REPO_ROOT / "data" / "logs", env, ports, args.gateways,
                               key_users=("admin", "student1"))
    print(f"""
MindRouter is up: HAProxy {stack.gateway_url} in front of {len(stack.gateway_urls)} gateways
({", ".join(stack.gateway_urls)}), admin app {stack.admin_url}, database {env["DATABASE_URL"]},
Redis {env["REDIS_URL"]} (logs in data/logs/).

  export MINDROUTER_KEY={stack.keys["student1"]}   # student1
  export ADMIN_KEY={stack.keys["admin"]}   # admin

Ctrl-C stops everything.""", flush=True)
    serve_until_stopped(stack)


if __name__ == "__main__":
    main()
