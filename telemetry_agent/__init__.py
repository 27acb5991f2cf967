"""GPU node telemetry agent: per-GPU utilisation, memory, temperature and power read through NVML.

Run it on a GPU node (`python -m telemetry_agent --port 8007`); the gateway polls `GET /gpus` with the shared
secret and uses `telemetry_agent.client` to pick the GPUs a backend runs on. See docs/telemetry.md.
"""
