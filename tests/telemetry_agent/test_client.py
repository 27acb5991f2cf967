"""The gateway's side: parse an agent's report, pick a backend's GPUs, sum them into one figure each."""

from __future__ import annotations

import json

import pytest

from telemetry_agent.client import GpuReading, MalformedReport, parse_report, select_gpus, summarize
from tests.telemetry_agent.nvml_recording import MIB
from tests.telemetry_agent.test_report import EXPECTED_REPORT


def reading(index: int, **figures) -> GpuReading:
    blank = dict.fromkeys(
        (
            "uuid",
            "name",
            "utilization_gpu_pct",
            "utilization_memory_pct",
            "memory_used_bytes",
            "memory_total_bytes",
            "temperature_c",
            "power_w",
            "power_limit_w",
        )
    )
    return GpuReading(index=index, **(blank | figures))


def test_an_agent_report_parses_into_readings_with_nulls_kept():
    readings = parse_report(json.dumps(EXPECTED_REPORT))
    assert [r.index for r in readings] == [0, 1]
    assert readings[0].power_w == 512.345 and readings[0].memory_used_bytes == 73400 * MIB
    assert readings[1].power_w is None and readings[1].utilization_gpu_pct == 0


def test_parse_accepts_bytes_and_decoded_json_and_ignores_unknown_keys():
    extended = EXPECTED_REPORT | {"agent_version": "2"}
    extended["gpus"] = [gpu | {"fan_pct": 30} for gpu in EXPECTED_REPORT["gpus"]]
    assert parse_report(json.dumps(EXPECTED_REPORT).encode()) == parse_report(extended)


def test_integral_watts_read_as_floats():
    report = {"gpus": [{"index": 0, "power_w": 300, "power_limit_w": 700}]}
    assert parse_report(report)[0].power_limit_w == 700.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not JSON"),
        ({"error": "NVML could not initialise"}, "no 'gpus' list"),
        ({"gpus": [3]}, r"gpus\[0\] is int"),
        ({"gpus": [{"uuid": "GPU-x"}]}, r"gpus\[0\] has no index"),
        ({"gpus": [{"index": 0, "temperature_c": "hot"}]}, r"gpus\[0\].temperature_c is 'hot'"),
        ({"gpus": [{"index": True}]}, r"gpus\[0\].index is True"),
    ],
)
def test_a_malformed_report_is_refused_naming_what_is_wrong(body, message):
    with pytest.raises(MalformedReport, match=message):
        parse_report(body if isinstance(body, str) else json.dumps(body))


def test_select_gpus_returns_a_backends_gpus_in_the_order_configured():
    readings = [reading(0), reading(1), reading(2), reading(3)]
    assert [r.index for r in select_gpus(readings, [3, 1])] == [3, 1]


def test_select_gpus_names_an_index_the_node_does_not_have():
    with pytest.raises(ValueError, match=r"GPU index 4 not on this node \(it has GPUs: 0, 1\)"):
        select_gpus([reading(0), reading(1)], [1, 4])


def test_summarize_averages_utilisation_sums_memory_and_power_and_keeps_the_hottest():
    summary = summarize(parse_report(EXPECTED_REPORT))
    assert summary.gpus == 2
    assert summary.utilization_gpu_pct == 43.5 and summary.gpu_utilization == 0.435
    assert summary.memory_used_bytes == 73404 * MIB and summary.memory_total_bytes == 2 * 81559 * MIB
    assert summary.temperature_c == 52
    assert summary.power_w == 512.345  # GPU 1 does not report power: left out, not counted as 0


def test_summarize_of_gpus_reporting_nothing_is_all_none():
    summary = summarize([reading(0)])
    assert summary.utilization_gpu_pct is None and summary.gpu_utilization is None
    assert summary.power_w is None and summary.temperature_c is None
