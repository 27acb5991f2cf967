"""NVML readings as plain values, and the JSON report the agent serves (pure: no NVML, no clock, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class GpuSample:
    """One device as NVML reported it, in NVML's own units; None where NVML could not say."""

    index: int
    uuid: str | None = None
    name: str | None = None
    utilization_gpu_pct: int | None = None  # nvmlUtilization_t.gpu: % of the sample period a kernel ran
    utilization_memory_pct: int | None = None  # nvmlUtilization_t.memory: % of it device memory was busy
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: int | None = None
    power_mw: int | None = None  # nvmlDeviceGetPowerUsage answers milliwatts
    power_limit_mw: int | None = None  # nvmlDeviceGetEnforcedPowerLimit answers milliwatts


@dataclass(frozen=True)
class NodeSample:
    driver_version: str | None
    gpus: tuple[GpuSample, ...]


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else round(milliwatts / 1000, 3)


def gpu_entry(gpu: GpuSample) -> dict:
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "utilization_gpu_pct": gpu.utilization_gpu_pct,
        "utilization_memory_pct": gpu.utilization_memory_pct,
        "memory_used_bytes": gpu.memory_used_bytes,
        "memory_total_bytes": gpu.memory_total_bytes,
        "temperature_c": gpu.temperature_c,
        "power_w": _watts(gpu.power_mw),
        "power_limit_w": _watts(gpu.power_limit_mw),
    }


def build_report(sample: NodeSample, *, node: str, taken_at: datetime) -> dict:
    """The body of `GET /gpus`: devices in NVML index order, power in watts, memory in bytes."""
    if taken_at.tzinfo is None:
        raise ValueError(f"taken_at must carry a time zone (UTC), got naive {taken_at.isoformat()}")
    return {
        "node": node,
        "driver_version": sample.driver_version,
        "gpus": [gpu_entry(gpu) for gpu in sorted(sample.gpus, key=lambda gpu: gpu.index)],
        "taken_at": taken_at.isoformat(timespec="milliseconds"),
    }
