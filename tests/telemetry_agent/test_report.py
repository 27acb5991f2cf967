"""NVML readings, replayed from a recording, turned into the `/gpus` report: units, nulls, order."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import pytest

from telemetry_agent.nvml_reader import NvmlReader, NvmlUnavailable
from telemetry_agent.report import GpuSample, NodeSample, build_report
from tests.telemetry_agent.fake_nvml import FakeNvml
from tests.telemetry_agent.nvml_recording import DRIVER_RESERVED_BYTES, H100_TOTAL_BYTES, MIB, NOT_SUPPORTED

TAKEN_AT = datetime(2026, 1, 5, 9, 30, 0, 250000, tzinfo=UTC)

EXPECTED_REPORT = {
    "node": "gpu-a",
    "driver_version": "550.54.15",
    "gpus": [
        {
            "index": 0,
            "uuid": "GPU-5f3a1c2e-8d4b-4e7a-9c61-2b0d7e9f4a13",
            "name": "NVIDIA H100 80GB HBM3",
            "utilization_gpu_pct": 87,
            "utilization_memory_pct": 64,
            "memory_used_bytes": 73400 * MIB,
            "memory_total_bytes": 85_520_809_984,
            "temperature_c": 52,
            "power_w": 512.345,
            "power_limit_w": 700.0,
        },
        {
            "index": 1,
            "uuid": "GPU-c47e90b1-2f6d-4a38-b5e2-7d19a0c3f865",
            "name": "NVIDIA H100 80GB HBM3",
            "utilization_gpu_pct": 0,
            "utilization_memory_pct": 0,
            "memory_used_bytes": 4 * MIB,
            "memory_total_bytes": 85_520_809_984,
            "temperature_c": 33,
            "power_w": None,
            "power_limit_w": None,
        },
    ],
    "taken_at": "2026-01-05T09:30:00.250+00:00",
}


def report_from(fake: FakeNvml) -> dict:
    return build_report(NvmlReader(fake).read(), node="gpu-a", taken_at=TAKEN_AT)


def test_recorded_node_reports_bytes_percent_celsius_and_watts():
    assert report_from(FakeNvml()) == EXPECTED_REPORT


def test_milliwatts_become_watts():
    gpu = report_from(FakeNvml())["gpus"][0]
    assert (gpu["power_w"], gpu["power_limit_w"]) == (512.345, 700.0)  # NVML: 512345 mW, 700000 mW


def test_power_not_supported_reads_as_null_and_the_rest_of_the_device_still_reports():
    gpu = report_from(FakeNvml())["gpus"][1]
    assert gpu["power_w"] is None and gpu["power_limit_w"] is None
    assert gpu["temperature_c"] == 33 and gpu["memory_total_bytes"] == H100_TOTAL_BYTES


def test_utilisation_not_supported_as_in_mig_mode_reads_as_null():
    fake = FakeNvml()
    fake.devices[0]["nvmlDeviceGetUtilizationRates"] = NOT_SUPPORTED
    gpu = report_from(fake)["gpus"][0]
    assert gpu["utilization_gpu_pct"] is None and gpu["utilization_memory_pct"] is None
    assert gpu["memory_used_bytes"] == 73400 * MIB


def test_gpus_are_listed_in_nvml_index_order():
    sample = NodeSample(driver_version="x", gpus=(GpuSample(index=2), GpuSample(index=0), GpuSample(index=1)))
    report = build_report(sample, node="n", taken_at=TAKEN_AT)
    assert [gpu["index"] for gpu in report["gpus"]] == [0, 1, 2]


def test_memory_used_comes_from_v2_which_leaves_out_driver_reserved_memory_as_nvidia_smi_does():
    fake = FakeNvml()
    report_from(fake)
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 0


def test_memory_falls_back_to_v1_once_where_the_driver_lacks_v2():
    fake = FakeNvml()
    for device in fake.devices:
        device["nvmlDeviceGetMemoryInfo_v2"] = {"nvml_error": "NVMLError_FunctionNotFound"}
    reader = NvmlReader(fake)
    first = build_report(reader.read(), node="gpu-a", taken_at=TAKEN_AT)
    reader.read()
    assert first["gpus"][0]["memory_used_bytes"] == 73400 * MIB + DRIVER_RESERVED_BYTES
    assert fake.calls["nvmlDeviceGetMemoryInfo_v2"] == 1  # not retried on every read


def test_an_unexpected_error_on_one_field_nulls_it_and_warns_once(caplog):
    fake = FakeNvml()
    fake.devices[1]["nvmlDeviceGetTemperature"] = {"nvml_error": "NVMLError_GpuIsLost"}
    reader = NvmlReader(fake)
    with caplog.at_level(logging.WARNING, logger="telemetry_agent.nvml"):
        report = build_report(reader.read(), node="gpu-a", taken_at=TAKEN_AT)
        reader.read()
    assert report["gpus"][1]["temperature_c"] is None and report["gpus"][0]["temperature_c"] == 52
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == ["NVML could not read temperature of GPU 1: GPU is lost (reported as null)"]


def test_strings_nvml_returns_as_bytes_are_decoded():
    fake = FakeNvml()
    fake.devices[0]["nvmlDeviceGetUUID"] = b"GPU-5f3a1c2e-8d4b-4e7a-9c61-2b0d7e9f4a13"
    assert report_from(fake)["gpus"][0]["uuid"] == "GPU-5f3a1c2e-8d4b-4e7a-9c61-2b0d7e9f4a13"


def test_no_driver_raises_nvml_unavailable_saying_why():
    with pytest.raises(NvmlUnavailable, match="NVML Shared Library Not Found.*NVIDIA driver installed"):
        NvmlReader(FakeNvml(init_error="NVMLError_LibraryNotFound")).read()


def test_nvml_is_initialised_once_and_shut_down_on_close():
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    reader.read()
    reader.close()
    assert fake.calls["nvmlInit"] == 1 and fake.calls["nvmlShutdown"] == 1 and fake.initialised == 0


def test_a_naive_timestamp_is_refused():
    with pytest.raises(ValueError, match="time zone"):
        build_report(NodeSample("x", ()), node="n", taken_at=datetime(2026, 1, 5))


def test_a_node_without_nvidia_ml_py_is_told_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(NvmlUnavailable, match="pip install nvidia-ml-py"):
        NvmlReader().read()
