"""The gateway's Prometheus metrics, defined once per process (a script reload keeps them)."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "mindrouter_requests_total", "Requests answered, by client endpoint, model, backend and status.",
    ["endpoint", "model", "backend", "status"],
)
IN_FLIGHT = Gauge("mindrouter_in_flight_requests", "Requests sent to a backend and not yet finished.", ["backend"])
QUEUED = Gauge("mindrouter_queued_requests", "Requests waiting for a backend slot, by model.", ["model"])
BACKEND_UP = Gauge("mindrouter_backend_up", "1 when the backend answered its last poll, else 0.", ["backend"])
QUEUE_WAIT = Histogram(
    "mindrouter_queue_wait_seconds", "Time a request waited for a backend slot.",
    buckets=(0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
