"""A backend attached to a GPU node's telemetry agent shows its GPUs' figures, next to (not mixed with) KV cache."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sim.stack import PYTHON, Service, free_port, wait_until
from store import init_database
from store.models import Backend, TelemetrySample
from tests.telemetry_agent.nvml_recording import MIB, RECORDING


def gpu_gauges(cluster, backend: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{cluster.gateway_url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("mindrouter_gpu_") and sample.labels.get("backend") == backend:
                found[sample.name, sample.labels["gpu"]] = sample.value
    return found


def test_gpu_figures_of_the_backends_own_gpus_reach_metrics_and_telemetry(cluster, tmp_path):
    agent_port, node_port = free_port(), free_port()
    agent = Service("gpu-agent", [PYTHON, "-m", "tests.support.fake_gpu_node", "--port", str(agent_port)],
                    cluster.env, tmp_path)
    node = Service("gpu-node", [PYTHON, "-m", "sim", "ollama", "--port", str(node_port), "--models", "gpu-model"],
                   {}, tmp_path)
    registered = None
    try:
        agent.wait_http(f"http://127.0.0.1:{agent_port}/healthz")
        node.wait_http(f"http://127.0.0.1:{node_port}/api/version")
        registered = httpx.post(f"{cluster.gateway_url}/admin/backends/register",
                                headers={"Authorization": f"Bearer {cluster.keys['admin']}"}, json={
                                    "name": "gpu-node", "url": f"http://127.0.0.1:{node_port}", "engine": "ollama",
                                    "telemetry_url": f"http://127.0.0.1:{agent_port}", "gpu_indices": [0]})
        assert registered.status_code == 201, registered.text
        wait_until(lambda: gpu_gauges(cluster, "gpu-node"), 15, "GPU gauges for gpu-node")
        recorded = RECORDING["devices"][0]
        assert gpu_gauges(cluster, "gpu-node") == {
            ("mindrouter_gpu_utilization_ratio", "0"): recorded["nvmlDeviceGetUtilizationRates"]["gpu"] / 100,
            ("mindrouter_gpu_memory_used_bytes", "0"): 73400 * MIB,
        }  # GPU 1 of that node belongs to some other backend: not shown here
        init_database(cluster.env["DATABASE_URL"])
        backend = Backend.get(Backend.name == "gpu-node")
        wait_until(lambda: TelemetrySample.select().where(TelemetrySample.backend == backend).exists(), 10, "a sample")
        sample = TelemetrySample.get(TelemetrySample.backend == backend)
        assert (sample.gpu_utilization, sample.gpu_memory_used_bytes) == (0.87, 73400 * MIB)
        assert sample.kv_cache_usage is None  # an Ollama node reports no KV cache: the GPU figure is not one
    finally:
        if registered is not None and registered.status_code == 201:
            httpx.post(f"{cluster.gateway_url}/admin/backends/{registered.json()['id']}/disable",
                       headers={"Authorization": f"Bearer {cluster.keys['admin']}"})
        agent.stop()
        node.stop()
