"""What the gateway needs from a node agent's `GET /gpus` answer (pure: parse, pick a backend's GPUs, sum up).

A backend is configured with its node agent's URL and the GPU indices it runs on; the gateway polls the agent,
then `select_gpus(parse_report(body), indices)` gives that backend's figures. These are NVML figures only:
vLLM's KV-cache usage comes from the engine's /metrics and stays a separate signal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields


class MalformedReport(ValueError):
    """The agent's answer is not a telemetry report; the message names the offending part."""


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str | None
    name: str | None
    utilization_gpu_pct: int | None
    utilization_memory_pct: int | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None


_TYPES: dict[str, tuple[type, ...]] = {
    "index": (int,),
    "uuid": (str,),
    "name": (str,),
    "utilization_gpu_pct": (int,),
    "utilization_memory_pct": (int,),
    "memory_used_bytes": (int,),
    "memory_total_bytes": (int,),
    "temperature_c": (int,),
    "power_w": (int, float),
    "power_limit_w": (int, float),
}
assert set(_TYPES) == {field.name for field in fields(GpuReading)}


def _reading(entry: object, position: int) -> GpuReading:
    if not isinstance(entry, dict):
        raise MalformedReport(f"gpus[{position}] is {type(entry).__name__}, expected an object")
    values = {}
    for name, types in _TYPES.items():
        value = entry.get(name)
        if value is None and name == "index":
            raise MalformedReport(f"gpus[{position}] has no index")
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise MalformedReport(
                f"gpus[{position}].{name} is {value!r}, expected {types[0].__name__} or null"
            )
        values[name] = float(value) if value is not None and name.startswith("power") else value
    return GpuReading(**values)


def parse_report(report: str | bytes | dict) -> list[GpuReading]:
    """The GPUs in an agent's `/gpus` answer (JSON text or already decoded), in index order.

    Unknown extra keys are ignored, so an older gateway reads a newer agent; a missing figure reads as None.
    """
    if isinstance(report, str | bytes):
        try:
            report = json.loads(report)
        except ValueError as error:
            raise MalformedReport(f"telemetry report is not JSON: {error}") from error
    if not isinstance(report, dict) or not isinstance(report.get("gpus"), list):
        raise MalformedReport("telemetry report has no 'gpus' list")
    readings = [_reading(entry, position) for position, entry in enumerate(report["gpus"])]
    return sorted(readings, key=lambda reading: reading.index)


def select_gpus(readings: Sequence[GpuReading], indices: Iterable[int]) -> list[GpuReading]:
    """The readings for a backend's GPU indices, in the order asked; an index the node lacks is an error."""
    by_index = {reading.index: reading for reading in readings}
    wanted = list(indices)
    missing = [index for index in wanted if index not in by_index]
    if missing:
        have = ", ".join(str(index) for index in sorted(by_index)) or "none"
        raise ValueError(f"GPU index {', '.join(map(str, missing))} not on this node (it has GPUs: {have})")
    return [by_index[index] for index in wanted]


@dataclass(frozen=True)
class GpuSummary:
    """One backend's GPUs as one figure each; None where no selected GPU reported that figure."""

    gpus: int
    utilization_gpu_pct: float | None  # mean over the GPUs that report it
    memory_used_bytes: int | None  # sums over the GPUs that report it
    memory_total_bytes: int | None
    temperature_c: int | None  # the hottest
    power_w: float | None  # sums
    power_limit_w: float | None

    @property
    def gpu_utilization(self) -> float | None:
        """Utilisation as a 0..1 fraction, the scale of the scheduler's `BackendState.gpu_utilization`."""
        return None if self.utilization_gpu_pct is None else self.utilization_gpu_pct / 100


def summarize(readings: Sequence[GpuReading]) -> GpuSummary:
    def known(name: str) -> list:
        return [value for reading in readings if (value := getattr(reading, name)) is not None]

    def total(name: str):
        values = known(name)
        return round(sum(values), 3) if values else None

    utilization = known("utilization_gpu_pct")
    return GpuSummary(
        gpus=len(readings),
        utilization_gpu_pct=sum(utilization) / len(utilization) if utilization else None,
        memory_used_bytes=total("memory_used_bytes"),
        memory_total_bytes=total("memory_total_bytes"),
        temperature_c=max(known("temperature_c"), default=None),
        power_w=total("power_w"),
        power_limit_w=total("power_limit_w"),
    )
