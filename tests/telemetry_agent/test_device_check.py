"""The device check's judgement of agent vs nvidia-smi (the run itself needs a GPU node)."""

from __future__ import annotations

import dataclasses
import json

from telemetry_agent.client import parse_report
from telemetry_agent.device_check import SMI_COMMAND, compare, main, parse_smi_csv
from telemetry_agent.nvml_reader import NvmlReader
from tests.telemetry_agent.fake_nvml import FakeNvml
from tests.telemetry_agent.nvml_recording import RECORDING
from tests.telemetry_agent.test_report import EXPECTED_REPORT

# What nvidia-smi prints for the recorded node with SMI_COMMAND (MiB, W, degrees C, no units).
SMI_OUTPUT = (
    "0, GPU-5f3a1c2e-8d4b-4e7a-9c61-2b0d7e9f4a13, NVIDIA H100 80GB HBM3, 85, 73400, 81559, 53, 498.27\n"
    "1, GPU-c47e90b1-2f6d-4a38-b5e2-7d19a0c3f865, NVIDIA H100 80GB HBM3, 0, 4, 81559, 33, [N/A]\n"
)


def verdicts(smi_text: str, report: dict = EXPECTED_REPORT) -> dict[tuple[int, str], bool]:
    return {(f.index, f.field): f.ok for f in compare(parse_smi_csv(smi_text), parse_report(report))}


def test_the_query_is_the_documented_one():
    assert SMI_COMMAND[1:] == (
        "--query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw",
        "--format=csv,noheader,nounits",
    )


def test_nvidia_smi_csv_parses_with_not_available_as_none():
    rows = parse_smi_csv(SMI_OUTPUT)
    assert rows[0].power_w == 498.27 and rows[0].memory_total_mib == 81559
    assert rows[1].power_w is None and rows[1].name == "NVIDIA H100 80GB HBM3"


def test_figures_within_tolerance_agree():
    assert all(verdicts(SMI_OUTPUT).values())


def test_each_figure_beyond_tolerance_disagrees():
    row = "0, GPU-5f3a1c2e-8d4b-4e7a-9c61-2b0d7e9f4a13, NVIDIA H100 80GB HBM3, 85, 73400, 81559, 53, 498.27"
    changed = {
        "memory.used MiB": row.replace(", 73400,", ", 72500,"),  # 900 MiB off: over 1% of 81559 MiB
        "memory.total MiB": row.replace(", 81559,", ", 81558,"),
        "temperature.gpu C": row.replace(", 53,", ", 55,"),  # 3 C off
        "power.draw W": row.replace("498.27", "430.00"),  # 19% off
        "uuid": row.replace("GPU-5f3a", "GPU-0000"),
    }
    for field, line in changed.items():
        result = verdicts(line + "\n" + SMI_OUTPUT.splitlines()[1])
        assert [key for key, ok in result.items() if not ok] == [(0, field)], field


def test_utilisation_is_shown_but_never_judged():
    assert verdicts(SMI_OUTPUT.replace(", 85,", ", 5,"))[(0, "utilization.gpu %")]


def test_power_reported_by_only_one_side_disagrees():
    report = dict(
        EXPECTED_REPORT, gpus=[EXPECTED_REPORT["gpus"][0], dict(EXPECTED_REPORT["gpus"][1], power_w=61.0)]
    )
    assert not verdicts(SMI_OUTPUT, report)[(1, "power.draw W")]


def test_a_gpu_missing_from_one_side_disagrees():
    findings = compare(parse_smi_csv(SMI_OUTPUT.splitlines()[0]), parse_report(EXPECTED_REPORT))
    assert [dataclasses.astuple(f)[:2] for f in findings if not f.ok] == [(-1, "gpu indices")]


def test_the_whole_check_passes_against_the_recorded_node_through_a_real_agent(capsys):
    exit_code = main([], reader=NvmlReader(FakeNvml()), nvidia_smi=lambda: SMI_OUTPUT)
    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "agent GET /gpus -> 200" in out and "0 disagreement(s) over 14 figures" in out


def test_the_whole_check_fails_when_figures_disagree(capsys):
    hot = SMI_OUTPUT.replace(", 53,", ", 60,")
    assert main([], reader=NvmlReader(FakeNvml()), nvidia_smi=lambda: hot) == 1
    assert "DISAGREE" in capsys.readouterr().out


def test_the_check_cannot_judge_without_nvml(capsys):
    reader = NvmlReader(FakeNvml(init_error="NVMLError_DriverNotLoaded"))
    assert main([], reader=reader, nvidia_smi=lambda: SMI_OUTPUT) == 2
    assert "Driver Not Loaded" in capsys.readouterr().err


def test_record_writes_nvml_answers_in_the_recording_format(tmp_path, capsys):
    path = tmp_path / "nvml.json"
    main(["--record", str(path)], reader=NvmlReader(FakeNvml()), nvidia_smi=lambda: SMI_OUTPUT)
    assert json.loads(path.read_text()) == RECORDING  # so a capture from a real node can replace the fixture
