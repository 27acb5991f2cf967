"""The gateway's Prometheus metrics, defined once per process (a script reload keeps them).

Each is updated by the code path its name says: Upstream counts requests and attempts, Gate
the queue and slots, Record the timings and tokens, the registry the backends' state.
"""

import functools

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "mindrouter_requests_total", "Requests answered, by client endpoint, model, backend and status.",
    ["endpoint", "model", "backend", "status"],
)
UPSTREAM_ATTEMPTS = Counter(
    "mindrouter_upstream_attempts_total", "Requests sent to a backend, by backend and outcome (ok, failed).",
    ["backend", "outcome"],
)
REFUSALS = Counter(
    "mindrouter_policy_refusals_total",
    "Requests refused before they ran, by reason (rate_limit_exceeded, insufficient_quota, too_many_waiting) "
    "and user role.", ["reason", "role"],
)
STREAMS = Counter(
    "mindrouter_streams_total", "Streamed answers, by the way their pieces took to the caller: straight (written onto "
    "its connection by the gateway) or relayed (through mitmproxy's HTTP layers: callers other than HTTP/1.1).", ["path"],
)
BACKEND_CONNECTIONS = Counter(
    "mindrouter_backend_connections_total", "Requests sent to a backend, by the connection each went on: new, or "
    "kept from an earlier whole answer; stale counts kept ones the backend had closed (the request then goes on a new one).",
    ["connection"],
)
FAILOVERS = Counter("mindrouter_failovers_total", "Requests moved to another backend before the first byte.", ["model"])
TOKENS = Counter(
    "mindrouter_tokens_total", "Tokens the backends reported, by model, user role and direction (prompt, completion).",
    ["model", "role", "direction"],
)
IN_FLIGHT = Gauge("mindrouter_in_flight_requests", "Requests holding a backend slot.", ["backend"])
QUEUED = Gauge("mindrouter_queued_requests", "Requests waiting for a backend slot, by model.", ["model"])
QUEUE_WAIT = Histogram("mindrouter_queue_wait_seconds", "Time a request waited for a backend slot.",
                       buckets=LATENCY_BUCKETS)
TIME_TO_FIRST_TOKEN = Histogram("mindrouter_time_to_first_byte_seconds",
                                "From the request's arrival to the first byte of its answer.", ["model"],
                                buckets=LATENCY_BUCKETS)
TOTAL_TIME = Histogram("mindrouter_request_duration_seconds", "From the request's arrival to its last byte.",
                       ["model"], buckets=LATENCY_BUCKETS)
OVERHEAD = Histogram(
    "mindrouter_gateway_overhead_seconds",
    "Time the gateway itself spent on a request before sending it upstream (queue wait excluded).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
BACKEND_UP = Gauge("mindrouter_backend_up", "1 when the backend answered its last poll, else 0.", ["backend"])
BACKEND_BREAKER_OPEN = Gauge("mindrouter_backend_breaker_open", "1 while the backend's circuit breaker keeps it out.",
                             ["backend"])
MODEL_RESIDENT = Gauge("mindrouter_model_resident", "1 when the backend holds the model in memory.", ["backend", "model"])
BACKEND_WAITING = Gauge("mindrouter_backend_waiting_requests", "The engine's own queue (vLLM).", ["backend"])
BACKEND_RUNNING = Gauge("mindrouter_backend_running_requests", "Requests the engine reports running (vLLM).",
                        ["backend"])
KV_CACHE_USAGE = Gauge("mindrouter_backend_kv_cache_usage_ratio", "KV-cache use the engine reports, 0..1 (vLLM).",
                       ["backend"])
GPU_UTILIZATION = Gauge("mindrouter_gpu_utilization_ratio", "GPU utilisation from the node agent, 0..1.",
                        ["backend", "gpu"])
GPU_MEMORY_USED = Gauge("mindrouter_gpu_memory_used_bytes", "GPU memory in use from the node agent.", ["backend", "gpu"])
CLIENT_CONNECTIONS = Gauge("mindrouter_client_connections", "Client connections this gateway process holds open.")
REFUSED_CONNECTIONS = Counter("mindrouter_refused_connections_total",
                              "Client connections closed at once for being over max_client_connections.")


@functools.cache
def series(metric: Counter | Gauge | Histogram, *labels: str):
    """One labelled series of `metric`, looked up once: prometheus_client's `labels` converts every value and
    takes a lock on each call, several times a request. Label values are bounded (models served, backends,
    roles, statuses), so is this cache."""
    return metric.labels(*labels)
