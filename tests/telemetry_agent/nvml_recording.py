"""NVML answers for a two-GPU H100 node, replayed by `FakeNvml`.

Where the values come from: representative, not captured. No GPU was at hand when this was written, so the
figures are typical of an NVIDIA H100 80GB HBM3 (SXM5) as NVIDIA documents it and nvidia-smi shows it
(81559 MiB total, 700 W enforced power limit), in the units NVML answers in: memory in bytes, power in
milliwatts, utilisation in percent, temperature in degrees Celsius. GPU 0 is busy serving a model; GPU 1 is
idle and answers NotSupported for power, as a GPU handed to a virtual machine without power management does.
A call NVML refuses is recorded as {"nvml_error": "<pynvml error class name>"}. To replace these values with
a capture from a real node: `python -m telemetry_agent.device_check --record nvml.json` writes this format.
"""

MIB = 1024 * 1024
H100_TOTAL_BYTES = 81559 * MIB  # 85_520_809_984
DRIVER_RESERVED_BYTES = 522 * MIB  # driver-reserved memory: v1 counts it as used, v2 (and nvidia-smi) not

NOT_SUPPORTED = {"nvml_error": "NVMLError_NotSupported"}

RECORDING = {
    "nvmlSystemGetDriverVersion": "550.54.15",
    "devices": [
        {
            "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetUUID": "GPU-5f3a1c2e-8d4b-4e7a-9c61-2b0d7e9f4a13",
            "nvmlDeviceGetUtilizationRates": {"gpu": 87, "memory": 64},
            "nvmlDeviceGetMemoryInfo_v2": {
                "total": H100_TOTAL_BYTES,
                "reserved": DRIVER_RESERVED_BYTES,
                "used": 73400 * MIB,
                "free": H100_TOTAL_BYTES - DRIVER_RESERVED_BYTES - 73400 * MIB,
            },
            "nvmlDeviceGetMemoryInfo": {
                "total": H100_TOTAL_BYTES,
                "used": 73400 * MIB + DRIVER_RESERVED_BYTES,
                "free": H100_TOTAL_BYTES - DRIVER_RESERVED_BYTES - 73400 * MIB,
            },
            "nvmlDeviceGetTemperature": 52,
            "nvmlDeviceGetPowerUsage": 512345,
            "nvmlDeviceGetEnforcedPowerLimit": 700000,
        },
        {
            "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetUUID": "GPU-c47e90b1-2f6d-4a38-b5e2-7d19a0c3f865",
            "nvmlDeviceGetUtilizationRates": {"gpu": 0, "memory": 0},
            "nvmlDeviceGetMemoryInfo_v2": {
                "total": H100_TOTAL_BYTES,
                "reserved": DRIVER_RESERVED_BYTES,
                "used": 4 * MIB,
                "free": H100_TOTAL_BYTES - DRIVER_RESERVED_BYTES - 4 * MIB,
            },
            "nvmlDeviceGetMemoryInfo": {
                "total": H100_TOTAL_BYTES,
                "used": 4 * MIB + DRIVER_RESERVED_BYTES,
                "free": H100_TOTAL_BYTES - DRIVER_RESERVED_BYTES - 4 * MIB,
            },
            "nvmlDeviceGetTemperature": 33,
            "nvmlDeviceGetPowerUsage": NOT_SUPPORTED,
            "nvmlDeviceGetEnforcedPowerLimit": NOT_SUPPORTED,
        },
    ],
}
