"""A stand-in for the `pynvml` module that replays a recording (see nvml_recording.py).

It raises pynvml's own error classes (importable without a driver), so the reader is tested against exactly
what nvidia-ml-py raises, and it counts calls and notes which thread made them.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from types import SimpleNamespace

import pynvml

from tests.telemetry_agent.nvml_recording import RECORDING


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    nvmlMemory_v2 = pynvml.nvmlMemory_v2

    def __init__(self, recording: dict | None = None, *, init_error: str | None = None):
        self.recording = copy.deepcopy(RECORDING if recording is None else recording)
        self.init_error = init_error  # e.g. "NVMLError_LibraryNotFound": no driver here
        self.calls: Counter[str] = Counter()
        self.threads: set[str] = set()
        self.initialised = 0

    @property
    def devices(self) -> list[dict]:
        return self.recording["devices"]

    def _answer(self, function: str, value):
        self.calls[function] += 1
        self.threads.add(threading.current_thread().name)
        if isinstance(value, dict) and "nvml_error" in value:
            raise getattr(pynvml, value["nvml_error"])()  # e.g. pynvml.NVMLError_NotSupported
        return value

    def _device(self, handle: SimpleNamespace, function: str):
        return self._answer(function, self.devices[handle.index][function])

    def nvmlInit(self) -> None:
        self._answer("nvmlInit", None)
        if self.init_error:
            raise getattr(pynvml, self.init_error)()
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._answer("nvmlShutdown", None)
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._answer("nvmlSystemGetDriverVersion", self.recording["nvmlSystemGetDriverVersion"])

    def nvmlDeviceGetCount(self) -> int:
        return self._answer("nvmlDeviceGetCount", len(self.devices))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        self._answer("nvmlDeviceGetHandleByIndex", None)
        if not 0 <= index < len(self.devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle) -> str:
        return self._device(handle, "nvmlDeviceGetName")

    def nvmlDeviceGetUUID(self, handle) -> str:
        return self._device(handle, "nvmlDeviceGetUUID")

    def nvmlDeviceGetUtilizationRates(self, handle) -> SimpleNamespace:
        return SimpleNamespace(**self._device(handle, "nvmlDeviceGetUtilizationRates"))

    def nvmlDeviceGetMemoryInfo(self, handle, version=None) -> SimpleNamespace:
        if version is None:
            return SimpleNamespace(**self._device(handle, "nvmlDeviceGetMemoryInfo"))
        assert version == pynvml.nvmlMemory_v2, f"unexpected memory struct version {version:#x}"
        return SimpleNamespace(version=version, **self._device(handle, "nvmlDeviceGetMemoryInfo_v2"))

    def nvmlDeviceGetTemperature(self, handle, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._device(handle, "nvmlDeviceGetTemperature")

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        return self._device(handle, "nvmlDeviceGetPowerUsage")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle) -> int:
        return self._device(handle, "nvmlDeviceGetEnforcedPowerLimit")
