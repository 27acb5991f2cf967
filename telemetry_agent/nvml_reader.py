"""Read every GPU on this node through NVML. Blocking: the server calls it from one worker thread.

The `pynvml` module (package nvidia-ml-py) is injected, so tests replay recorded NVML answers through a fake
module with the same functions and error classes.
"""

from __future__ import annotations

import logging
from types import ModuleType

from telemetry_agent.report import GpuSample, NodeSample

log = logging.getLogger("telemetry_agent.nvml")


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this node at all (no library, no driver, no permission); the message says why."""


def as_text(value: str | bytes | None) -> str | None:
    # Some nvidia-ml-py releases return bytes from nvmlDeviceGetUUID and friends, others str.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class NvmlReader:
    def __init__(self, nvml: ModuleType | None = None):
        self._nvml = nvml  # None: import pynvml on the first read
        self._initialised = False
        self._memory_v2 = True  # nvmlDeviceGetMemoryInfo_v2 matches nvidia-smi; older drivers lack it
        self._warned: set[tuple[int, str, str]] = set()

    def read(self) -> NodeSample:
        nvml = self.nvml
        self._initialise(nvml)
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as error:
            self._initialised = False  # initialise again on the next read; the driver may come back
            raise NvmlUnavailable(f"NVML could not count the GPUs: {error}") from error
        driver_version = as_text(self._field(nvml, -1, "driver_version", nvml.nvmlSystemGetDriverVersion))
        return NodeSample(driver_version=driver_version, gpus=tuple(self._gpu(nvml, i) for i in range(count)))

    def close(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        try:
            self._nvml.nvmlShutdown()
        except Exception as error:  # shutting down: nothing left to do about it
            log.debug("nvmlShutdown failed: %s", error)

    @property
    def nvml(self) -> ModuleType:
        """The pynvml module in use (imported on first use); raises NvmlUnavailable when it is missing."""
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as error:
                raise NvmlUnavailable(
                    "the pynvml module is missing: install nvidia-ml-py (pip install nvidia-ml-py)"
                ) from error
            self._nvml = pynvml
        return self._nvml

    def _initialise(self, nvml: ModuleType) -> None:
        if self._initialised:
            return
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            raise NvmlUnavailable(
                f"NVML could not initialise ({error}): is the NVIDIA driver installed and loaded on this node?"
            ) from error
        self._initialised = True

    def _gpu(self, nvml: ModuleType, index: int) -> GpuSample:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as error:
            self._warn_once(index, "handle", error)
            return GpuSample(index=index)
        utilization = self._field(nvml, index, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._memory(nvml, index, handle)
        return GpuSample(
            index=index,
            uuid=as_text(self._field(nvml, index, "uuid", nvml.nvmlDeviceGetUUID, handle)),
            name=as_text(self._field(nvml, index, "name", nvml.nvmlDeviceGetName, handle)),
            utilization_gpu_pct=None if utilization is None else utilization.gpu,
            utilization_memory_pct=None if utilization is None else utilization.memory,
            memory_used_bytes=None if memory is None else memory.used,
            memory_total_bytes=None if memory is None else memory.total,
            temperature_c=self._field(
                nvml, index, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
            ),
            power_mw=self._field(nvml, index, "power", nvml.nvmlDeviceGetPowerUsage, handle),
            power_limit_mw=self._field(
                nvml, index, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle
            ),
        )

    def _memory(self, nvml: ModuleType, index: int, handle):
        # v1 counts driver-reserved memory as used (hundreds of MiB on an idle H100); v2 answers what
        # nvidia-smi shows. Fall back to v1 once, for good, where the driver lacks v2.
        version = getattr(nvml, "nvmlMemory_v2", None)
        if self._memory_v2 and version is not None:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except nvml.NVMLError as error:
                log.info(
                    "nvmlDeviceGetMemoryInfo_v2 unavailable (%s); using v1, which counts reserved memory",
                    error,
                )
                self._memory_v2 = False
        return self._field(nvml, index, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)

    def _field(self, nvml: ModuleType, index: int, field: str, function, *args):
        """One NVML answer, or None where this device can't give it (NotSupported is normal: vGPU, MIG...)."""
        try:
            return function(*args)
        except nvml.NVMLError_NotSupported:
            return None
        except nvml.NVMLError as error:
            self._warn_once(index, field, error)
            return None

    def _warn_once(self, index: int, field: str, error: Exception) -> None:
        key = (index, field, str(error))
        if key not in self._warned:
            self._warned.add(key)
            where = "node" if index < 0 else f"GPU {index}"
            log.warning("NVML could not read %s of %s: %s (reported as null)", field, where, error)
