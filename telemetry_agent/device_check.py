"""Check the agent against nvidia-smi on a real GPU node: `python -m telemetry_agent.device_check`.

Starts the agent in-process on a loopback port with a throwaway secret, fetches `/gpus` as the gateway would,
asks nvidia-smi for the same figures, prints both side by side and exits 1 if they disagree beyond tolerance
(0: agree; 2: could not compare at all, e.g. no nvidia-smi or NVML unavailable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import subprocess
import sys
from dataclasses import dataclass

import aiohttp

from telemetry_agent.client import GpuReading, parse_report
from telemetry_agent.nvml_reader import NvmlReader, as_text
from telemetry_agent.server import start

SMI_FIELDS = (
    "index",
    "uuid",
    "name",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "power.draw",
)
SMI_COMMAND = (
    "nvidia-smi",
    f"--query-gpu={','.join(SMI_FIELDS)}",
    "--format=csv,noheader,nounits",
)
MIB = 1024 * 1024

# Tolerances. Utilisation is sampled by the driver over a window that differs between the two reads, so it
# is shown, never judged. Memory used moves as processes allocate; judged against 1% of the device's total,
# since near idle (a few MiB used) a relative error of the used figure itself means nothing.
MEMORY_USED_OF_TOTAL = 0.01
TEMPERATURE_C = 2
POWER_RELATIVE = 0.15


@dataclass(frozen=True)
class SmiRow:
    index: int
    uuid: str
    name: str
    utilization_gpu_pct: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    temperature_c: float | None
    power_w: float | None


@dataclass(frozen=True)
class Finding:
    index: int
    field: str
    smi: object
    agent: object
    ok: bool
    note: str = ""


def _number(text: str) -> float | None:
    text = text.strip()
    return None if text.startswith("[") or text in {"", "N/A"} else float(text)  # "[N/A]", "[Not Supported]"


def parse_smi_csv(text: str) -> list[SmiRow]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(SMI_FIELDS):
            raise ValueError(f"nvidia-smi line has {len(cells)} fields, expected {len(SMI_FIELDS)}: {line!r}")
        index, uuid, name, *figures = cells
        rows.append(SmiRow(int(index), uuid, name, *(_number(figure) for figure in figures)))
    return rows


def _close(smi: float | None, agent: float | None, tolerance: float) -> bool:
    if smi is None or agent is None:
        return smi is None and agent is None
    return abs(smi - agent) <= tolerance


def _mib(size_bytes: int | None) -> float | None:
    return None if size_bytes is None else size_bytes / MIB


def compare(smi_rows: list[SmiRow], readings: list[GpuReading]) -> list[Finding]:
    """Every figure of every GPU, nvidia-smi's next to the agent's, each judged against its tolerance."""
    agent_by_index = {reading.index: reading for reading in readings}
    findings = []
    if sorted(agent_by_index) != sorted(row.index for row in smi_rows):
        findings.append(
            Finding(-1, "gpu indices", [r.index for r in smi_rows], sorted(agent_by_index), False, "differ")
        )
    for row in smi_rows:
        agent = agent_by_index.get(row.index)
        if agent is None:
            continue
        used, total = _mib(agent.memory_used_bytes), _mib(agent.memory_total_bytes)
        used_tolerance = MEMORY_USED_OF_TOTAL * (row.memory_total_mib or 0)
        power_tolerance = POWER_RELATIVE * (row.power_w or 0)
        smi_power, smi_used, smi_total = row.power_w, row.memory_used_mib, row.memory_total_mib
        judged = (
            ("uuid", row.uuid, agent.uuid, row.uuid == agent.uuid, "exact"),
            ("name", row.name, agent.name, row.name == agent.name, "exact"),
            (
                "utilization.gpu %",
                row.utilization_gpu_pct,
                agent.utilization_gpu_pct,
                True,
                "shown, not judged",
            ),
            ("memory.used MiB", smi_used, used, _close(smi_used, used, used_tolerance), "within 1% of total"),
            ("memory.total MiB", smi_total, total, _close(smi_total, total, 0.999), "same MiB"),
            (
                "temperature.gpu C",
                row.temperature_c,
                agent.temperature_c,
                _close(row.temperature_c, agent.temperature_c, TEMPERATURE_C),
                f"within {TEMPERATURE_C} C",
            ),
            (
                "power.draw W",
                smi_power,
                agent.power_w,
                _close(smi_power, agent.power_w, power_tolerance),
                f"within {POWER_RELATIVE:.0%}",
            ),
        )
        findings += [Finding(row.index, *figure) for figure in judged]
    return findings


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "null" if value is None else str(value)


def print_findings(findings: list[Finding]) -> None:
    print(f"{'gpu':>3}  {'field':<18} {'nvidia-smi':<42} {'agent':<42} verdict")
    for finding in findings:
        verdict = "ok" if finding.ok else "DISAGREE"
        print(
            f"{finding.index:>3}  {finding.field:<18} {_show(finding.smi):<42} {_show(finding.agent):<42} "
            f"{verdict}  {finding.note}"
        )


async def fetch_from_agent(reader: NvmlReader) -> tuple[int, dict]:
    """`GET /gpus` from an agent started in-process on a loopback port, exactly as the gateway polls it."""
    secret = secrets.token_urlsafe(32)
    runner, url = await start(reader, secret=secret, host="127.0.0.1", port=0, node="device-check")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/gpus", headers={"Authorization": f"Bearer {secret}"}) as response:
                return response.status, await response.json()
    finally:
        await runner.cleanup()


def record_nvml(nvml) -> dict:
    """NVML's raw answers on this node, in the format of tests/telemetry_agent/nvml_recording.py.

    With --record, a run on a real node captures a recording that can replace the representative one.
    """

    def answer(convert, function, *args, **kwargs):
        try:
            return convert(function(*args, **kwargs))
        except nvml.NVMLError as error:
            return {"nvml_error": type(error).__name__}  # e.g. NVMLError_NotSupported

    def same(value):
        return value

    def memory_v1(memory):
        return {"total": memory.total, "used": memory.used, "free": memory.free}

    def memory_v2(memory):
        return {"total": memory.total, "reserved": memory.reserved, "used": memory.used, "free": memory.free}

    nvml.nvmlInit()
    try:
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            utilization = nvml.nvmlDeviceGetUtilizationRates
            devices.append(
                {
                    "nvmlDeviceGetName": answer(as_text, nvml.nvmlDeviceGetName, handle),
                    "nvmlDeviceGetUUID": answer(as_text, nvml.nvmlDeviceGetUUID, handle),
                    "nvmlDeviceGetUtilizationRates": answer(
                        lambda rates: {"gpu": rates.gpu, "memory": rates.memory}, utilization, handle
                    ),
                    "nvmlDeviceGetMemoryInfo_v2": answer(
                        memory_v2, nvml.nvmlDeviceGetMemoryInfo, handle, version=nvml.nvmlMemory_v2
                    ),
                    "nvmlDeviceGetMemoryInfo": answer(memory_v1, nvml.nvmlDeviceGetMemoryInfo, handle),
                    "nvmlDeviceGetTemperature": answer(
                        same, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
                    ),
                    "nvmlDeviceGetPowerUsage": answer(same, nvml.nvmlDeviceGetPowerUsage, handle),
                    "nvmlDeviceGetEnforcedPowerLimit": answer(
                        same, nvml.nvmlDeviceGetEnforcedPowerLimit, handle
                    ),
                }
            )
        return {
            "nvmlSystemGetDriverVersion": answer(as_text, nvml.nvmlSystemGetDriverVersion),
            "devices": devices,
        }
    finally:
        nvml.nvmlShutdown()


def run_nvidia_smi() -> str:
    return subprocess.run(SMI_COMMAND, capture_output=True, text=True, timeout=60, check=True).stdout


def main(
    argv: list[str] | None = None, *, reader: NvmlReader | None = None, nvidia_smi=run_nvidia_smi
) -> int:
    parser = argparse.ArgumentParser(prog="python -m telemetry_agent.device_check", description=__doc__)
    parser.add_argument(
        "--record", metavar="PATH", help="also write NVML's raw answers here (JSON), as a recording"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    reader = reader or NvmlReader()
    status, report = asyncio.run(fetch_from_agent(reader))
    print(f"agent GET /gpus -> {status}: {json.dumps(report)}")
    try:
        smi_output = nvidia_smi()
    except (OSError, subprocess.SubprocessError) as error:
        print(f"cannot run {' '.join(SMI_COMMAND)}: {error}", file=sys.stderr)
        return 2
    print(f"$ {' '.join(SMI_COMMAND)}\n{smi_output.rstrip()}")
    if status != 200:
        print(f"the agent could not read NVML: {report.get('error')}", file=sys.stderr)
        return 2
    if args.record:
        with open(args.record, "w", encoding="utf-8") as handle:
            json.dump(record_nvml(reader.nvml), handle, indent=2)
        print(f"recorded NVML's answers to {args.record}")
    findings = compare(parse_smi_csv(smi_output), parse_report(report))
    print_findings(findings)
    disagreements = [finding for finding in findings if not finding.ok]
    print(f"{len(disagreements)} disagreement(s) over {len(findings)} figures")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
