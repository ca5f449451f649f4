"""A fake of the ``pynvml`` module (nvidia-ml-py) for testing NVML readers on machines without a GPU.

Only the functions and constants txbench calls; values come from the keyword arguments.
``legacy=True`` offers only the pre-12 "throttle" names, as older drivers' bindings do.
"""

from __future__ import annotations

from types import SimpleNamespace


class NVMLError(Exception):
    pass


class FakeNvml:
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_FEATURE_ENABLED = 1
    NVML_FEATURE_DISABLED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlClocksEventReasonGpuIdle = 0x1
    nvmlClocksEventReasonApplicationsClocksSetting = 0x2
    nvmlClocksEventReasonSwPowerCap = 0x4
    nvmlClocksEventReasonHwSlowdown = 0x8
    nvmlClocksEventReasonSwThermalSlowdown = 0x20
    nvmlClocksEventReasonHwThermalSlowdown = 0x40
    nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x80
    NVMLError = NVMLError

    def __init__(self, *, sm=1980, max_sm=1980, reasons=0x0, temp=45, power_mw=120_000, pids=(),
                 persistence=1, app_clock=1980, default_app_clock=1980, ecc=(1, 1), ecc_errors=0,
                 devices=1, unsupported=(), legacy=False):
        self.sm, self.max_sm, self.reasons, self.temp, self.power_mw = sm, max_sm, reasons, temp, power_mw
        self.pids, self.persistence, self.app_clock, self.default_app_clock = pids, persistence, app_clock, \
            default_app_clock
        self.ecc, self.ecc_errors, self.devices, self.unsupported = ecc, ecc_errors, devices, set(unsupported)
        self.inits = 0
        if legacy:
            self.nvmlDeviceGetCurrentClocksEventReasons = None  # shadowed: getattr finds None, like a missing name

    def _check(self, name):
        if name in self.unsupported:
            raise NVMLError(f"{name}: Not Supported")

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetHandleByIndex(self, index):
        if index >= self.devices:
            raise NVMLError("Invalid Argument")
        return ("handle", index)

    def nvmlDeviceGetClockInfo(self, h, clock):
        self._check("nvmlDeviceGetClockInfo")
        return self.sm

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        self._check("nvmlDeviceGetMaxClockInfo")
        return self.max_sm

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        self._check("nvmlDeviceGetCurrentClocksEventReasons")
        return self.reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return self.reasons

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.temp

    def nvmlDeviceGetPowerUsage(self, h):
        self._check("nvmlDeviceGetPowerUsage")
        return self.power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=1 << 30) for p in self.pids]

    def nvmlDeviceGetPersistenceMode(self, h):
        return self.persistence

    def nvmlDeviceGetApplicationsClock(self, h, clock):
        self._check("nvmlDeviceGetApplicationsClock")
        return self.app_clock

    def nvmlDeviceGetDefaultApplicationsClock(self, h, clock):
        return self.default_app_clock

    def nvmlDeviceGetEccMode(self, h):
        self._check("nvmlDeviceGetEccMode")
        return list(self.ecc)

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter_type):
        return self.ecc_errors
