"""What the gate tells the scheduler about a backend: models, residency and the load its telemetry reports."""

from __future__ import annotations

from addons.gate import backend_state
from addons.polling import EngineLoad, ModelView
from addons.registry import BackendView
from scheduler import Scheduler
from telemetry_agent.client import GpuReading


def gpu(index: int, utilization_pct: int) -> GpuReading:
    return GpuReading(index, None, "H100", utilization_pct, None, 10 * 2**30, 80 * 2**30, 50, 300.0, 700.0)


def view(backend_id: int, **fields) -> BackendView:
    return BackendView(
        id=backend_id, name=f"node-{backend_id}", url="http://node", engine="vllm", max_concurrent=4,
        enabled=True, draining=False, priority=0, healthy=True,
        models={"qwen": ModelView("qwen", resident=True)}, **fields,
    )


def test_the_load_a_backend_reports_reaches_the_scheduler():
    state = backend_state(view(
        7, load=EngineLoad(running=2, waiting=3, kv_cache_usage=0.5), gpus=[gpu(0, 40), gpu(1, 80)],
        latency_ema_ms=12.5,
    ))
    assert (state.waiting, state.kv_cache_usage, state.gpu_utilization, state.latency_ema_ms) == (3, 0.5, 0.6, 12.5)
    assert state.models == {"qwen", "qwen:latest"} and state.resident == {"qwen", "qwen:latest"}


def test_a_backend_that_reports_nothing_counts_as_idle():
    state = backend_state(view(7))
    assert (state.waiting, state.kv_cache_usage, state.gpu_utilization, state.latency_ema_ms) == (0, None, None, None)


def test_among_equal_backends_the_one_whose_gpus_are_less_busy_gets_the_request():
    busy = view(1, load=EngineLoad(waiting=0, kv_cache_usage=0.9), gpus=[gpu(0, 95)], latency_ema_ms=5.0)
    quiet = view(2, load=EngineLoad(waiting=0, kv_cache_usage=0.1), gpus=[gpu(0, 20)], latency_ema_ms=9.0)
    scheduler = Scheduler()
    scheduler.update_backends([backend_state(busy), backend_state(quiet)])
    scheduler.submit("r1", "alice", 1.0, "qwen", 100, now=0.0)
    assert [grant.backend_id for grant in scheduler.dispatch(0.0)] == [2]


def test_between_equally_loaded_backends_the_faster_answering_one_wins():
    slow, fast = view(1, latency_ema_ms=40.0), view(2, latency_ema_ms=4.0)
    scheduler = Scheduler()
    scheduler.update_backends([backend_state(slow), backend_state(fast)])
    scheduler.submit("r1", "alice", 1.0, "qwen", 100, now=0.0)
    assert [grant.backend_id for grant in scheduler.dispatch(0.0)] == [2]
