"""Pre-flight checks of the machine: would a run started now be measured honestly?

Each check returns a :class:`Check` (``ok``, ``warn`` or ``fail``, a value and advice); nothing here
prints or exits (``txbench doctor`` does). A check whose source cannot be read says
"unknown (not readable here)" with status ``ok``: the doctor never fails for lack of a file.
The roots of /proc and /sys and the NVML module are parameters, so tests run on fake trees.

Prior art: pyperf ``system show``/``tune`` (governor, turbo, ...), Google Benchmark's
"CPU scaling is enabled" warning, NVBench's throttle detection.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import asdict, dataclass
from typing import Literal

from txbench.measure.interference import (
    OTHER_CORES_MIN,
    OVERSUB_TOLERANCE_CORES,
    NvmlSampler,
    cpu_block,
    cpu_snapshot,
    proc_cpu_s,
)

__all__ = ["Check", "ProcessShare", "BUSY_PROCESS_MIN_CORES", "LOAD_WARN_PER_CORE", "DEFAULT_WINDOW_S",
           "run_checks", "machine_state", "is_contaminated", "busy_processes", "cuda_checks"]

Status = Literal["ok", "warn", "fail"]

#: A process using at least this share of one core during the window is listed as busy.
BUSY_PROCESS_MIN_CORES = 0.10
#: Warn when the one-minute load average exceeds this many runnable tasks per core.
LOAD_WARN_PER_CORE = 0.5
#: Seconds over which processes' CPU use is sampled.
DEFAULT_WINDOW_S = 0.5
UNKNOWN = "unknown (not readable here)"


@dataclass(frozen=True)
class Check:
    """One pre-flight check: ``status`` is ok, warn or fail (fail: a run started now would be contaminated)."""

    name: str
    status: Status
    value: str
    advice: str = ""


@dataclass(frozen=True)
class ProcessShare:
    """A process and the share of one core it used during the sampling window."""

    pid: int
    name: str
    cores: float  # CPU-seconds per wall second (1.0 = one core busy)

    def label(self) -> str:
        """E.g. ``PID 1234 (python, 98% of a core)``."""
        return f"PID {self.pid} ({self.name}, {self.cores:.0%} of a core)"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _wait(seconds: float) -> None:
    """The sampling window's pause (a seam for tests that advance a fake /proc instead of sleeping)."""
    time.sleep(seconds)


def _uptime_s(proc: str) -> float | None:
    t = _read(os.path.join(proc, "uptime"))
    try:
        return float(t.split()[0]) if t else None
    except ValueError:
        return None


def _proc_times(proc: str, skip: set[int]) -> dict[int, tuple[str, float]]:
    out = {}
    for d in os.listdir(proc) if os.path.isdir(proc) else ():
        if not d.isdigit() or int(d) in skip:
            continue
        pid = int(d)
        s = proc_cpu_s(pid, proc)
        if s is None:
            continue
        text = _read(os.path.join(proc, d, "stat")) or ""
        name = text[text.find("(") + 1:text.rfind(")")] if "(" in text else "?"
        out[pid] = (name, s)
    return out


def busy_processes(proc: str = "/proc", window: float = DEFAULT_WINDOW_S) -> tuple[list[ProcessShare], float]:
    """Every other process's CPU share over ``window`` seconds, busiest first, and the window's length.

    The clock is ``<proc>/uptime`` (as top uses), so the share and the window come from one tree;
    this process is left out.
    """
    skip = {os.getpid()}
    t0, a = _uptime_s(proc), _proc_times(proc, skip)
    m0 = time.monotonic()
    _wait(window)
    t1, b = _uptime_s(proc), _proc_times(proc, skip)
    wall = (t1 - t0) if t0 is not None and t1 is not None and t1 > t0 else time.monotonic() - m0
    shares = [ProcessShare(pid, name, max(s - a[pid][1], 0.0) / wall)
              for pid, (name, s) in b.items() if pid in a and wall > 0]
    return sorted(shares, key=lambda p: -p.cores), wall


def _cores(proc: str) -> int:
    text = _read(os.path.join(proc, "stat")) or ""
    n = sum(1 for ln in text.splitlines() if ln.startswith("cpu") and not ln.startswith("cpu "))
    if os.path.realpath(proc) == "/proc" and hasattr(os, "sched_getaffinity"):
        n = min(n, len(os.sched_getaffinity(0))) if n else len(os.sched_getaffinity(0))
    return n or os.cpu_count() or 1


def _load_check(proc: str, cores: int) -> Check:
    t = _read(os.path.join(proc, "loadavg"))
    try:
        load1 = float(t.split()[0])
    except (AttributeError, IndexError, ValueError):
        return Check("load average", "ok", UNKNOWN)
    value = f"{load1:.2f} over the last minute on {cores} cores"
    if load1 > LOAD_WARN_PER_CORE * cores:
        return Check("load average", "warn", value, "something ran in the last minute; see busy processes")
    return Check("load average", "ok", value)


def _default_threads() -> tuple[int, str]:
    """Threads a torch run would use here, and where the number came from."""
    try:
        import torch

        return torch.get_num_threads(), "torch.get_num_threads()"
    except ImportError:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if os.environ.get(var, "").isdigit():
                return int(os.environ[var]), var
        return os.cpu_count() or 1, "cores (torch not importable)"


def _cpu_checks(proc: str, sys: str, window: float, threads: int | None) -> list[Check]:
    cores = _cores(proc)
    checks = [_load_check(proc, cores)]
    before = cpu_snapshot(proc, sys, freq=False)
    procs, wall = busy_processes(proc, window)
    after = cpu_snapshot(proc, sys, freq=False)
    busy = [p for p in procs if p.cores >= BUSY_PROCESS_MIN_CORES]
    # per-process shares name the culprits; the system-wide count also sees processes that came and went
    per_proc = sum(p.cores for p in procs)
    system = cpu_block(before, after, cores=cores, threads=1, steps=1).other_cores if after.t_s > before.t_s else 0
    other = max(per_proc, system)
    if busy:
        checks.append(Check("busy processes", "warn", ", ".join(p.label() for p in busy[:5])
                            + (f" and {len(busy) - 5} more" if len(busy) > 5 else ""),
                            "stop them, or give the run fewer threads than the cores they leave free"))
    else:
        checks.append(Check("busy processes", "ok", f"none above {BUSY_PROCESS_MIN_CORES:.0%} of a core "
                                                      f"over {wall:.1f} s"))
    n, source = (threads, "--threads") if threads else _default_threads()
    free = cores - other
    value = f"{n} thread{'s' if n != 1 else ''} ({source}); {free:.2f} of {cores} cores free (others use {other:.2f})"
    if n > free + OVERSUB_TOLERANCE_CORES and other >= OTHER_CORES_MIN:
        fit = int(free + OVERSUB_TOLERANCE_CORES)
        stop = f"stop {busy[0].label()}" if busy else "stop what keeps the cores busy"
        advice = (f"threads would share cores with other processes: set threads: [{fit}] in the suite, or {stop}"
                  if fit >= 1 else f"no core is free even for one thread: {stop}")
        checks.append(Check("torch threads", "fail", value, advice))
    else:
        checks.append(Check("torch threads", "ok", value))
    checks += [_governor_check(sys), _turbo_check(sys), _smt_check(sys)]
    return checks


def _governor_check(sys: str) -> Check:
    govs = sorted({g for p in glob.glob(os.path.join(sys, "devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"))
                   if (g := _read(p))})
    if not govs:
        return Check("CPU governor", "ok", UNKNOWN)
    if govs != ["performance"]:
        return Check("CPU governor", "warn", ", ".join(govs),
                     "the clock follows the load; `sudo cpupower frequency-set -g performance` "
                     "(or `pyperf system tune`) holds it steady")
    return Check("CPU governor", "ok", "performance")


def _turbo_check(sys: str) -> Check:
    no_turbo = _read(os.path.join(sys, "devices/system/cpu/intel_pstate/no_turbo"))
    boost = _read(os.path.join(sys, "devices/system/cpu/cpufreq/boost"))
    if no_turbo in ("0", "1"):
        on = no_turbo == "0"
    elif boost in ("0", "1"):
        on = boost == "1"
    else:
        return Check("turbo/boost", "ok", UNKNOWN)
    if on:
        return Check("turbo/boost", "warn", "on",
                     "the clock varies with temperature and how many cores are busy; "
                     "`pyperf system tune` turns it off for steadier numbers")
    return Check("turbo/boost", "ok", "off")


def _smt_check(sys: str) -> Check:
    active = _read(os.path.join(sys, "devices/system/cpu/smt/active"))
    if active not in ("0", "1"):
        return Check("SMT", "ok", UNKNOWN)
    if active == "1":
        return Check("SMT", "ok", "on", "two threads on sibling CPUs share one core: count physical cores "
                                        "when choosing threads")
    return Check("SMT", "ok", "off")


def cuda_checks(sampler: NvmlSampler) -> list[Check]:
    """Persistence mode, locked clocks, SM clock vs max and throttle reasons, other processes, ECC."""
    name = f"GPU {sampler.index}"
    if not sampler.available:
        return [Check(f"{name} NVML", "warn", sampler.reason or "not available",
                      "install nvidia-ml-py to check clocks, throttling and other processes")]
    enabled = sampler.const("NVML_FEATURE_ENABLED", default=1)
    sm = sampler.const("NVML_CLOCK_SM", default=1)
    checks = []
    pm = sampler.call("nvmlDeviceGetPersistenceMode")
    if pm is None:
        checks.append(Check(f"{name} persistence mode", "ok", UNKNOWN))
    elif pm == enabled:
        checks.append(Check(f"{name} persistence mode", "ok", "on"))
    else:
        checks.append(Check(f"{name} persistence mode", "warn", "off",
                            "the driver may unload between processes (slow first CUDA call); "
                            "`sudo nvidia-smi -pm 1`"))
    app_clock = sampler.call("nvmlDeviceGetApplicationsClock", sm)
    default_clock = sampler.call("nvmlDeviceGetDefaultApplicationsClock", sm)
    if app_clock is None:
        checks.append(Check(f"{name} application clocks", "ok", UNKNOWN))
    elif default_clock is not None and app_clock != default_clock:
        checks.append(Check(f"{name} application clocks", "ok", f"locked at {app_clock} MHz SM "
                                                                  f"(default {default_clock})"))
    else:
        checks.append(Check(f"{name} application clocks", "ok", f"default ({app_clock} MHz SM, not locked)",
                            "boost clocks vary with temperature and power; `sudo nvidia-smi -lgc` locks them"))
    snap = sampler.snapshot()
    clock = (f"{snap.sm_clock_mhz} of {snap.max_sm_clock_mhz} MHz" if snap.sm_clock_mhz is not None
             and snap.max_sm_clock_mhz else UNKNOWN)
    if snap.reasons:
        checks.append(Check(f"{name} SM clock", "warn", f"{clock}; slowed: {', '.join(snap.reasons)}",
                            "the GPU is throttling (heat or power): let it cool, check cooling and power limits"))
    else:
        # an idle GPU parks its clock low, so the current clock alone is no verdict before a run
        checks.append(Check(f"{name} SM clock", "ok", clock + (f", {snap.temperature_c} C"
                                                                if snap.temperature_c is not None else "")))
    if snap.other_pids:
        checks.append(Check(f"{name} other processes", "fail", "PID " + ", ".join(map(str, snap.other_pids)),
                            "another compute process shares the GPU: stop it or pick another device"))
    else:
        checks.append(Check(f"{name} other processes", "ok", "none"))
    mode = sampler.call("nvmlDeviceGetEccMode")
    if mode is None:
        checks.append(Check(f"{name} ECC", "ok", UNKNOWN))
    else:
        current = mode[0] if isinstance(mode, (tuple, list)) else mode
        errors = sampler.call("nvmlDeviceGetTotalEccErrors",
                              sampler.const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", default=1),
                              sampler.const("NVML_VOLATILE_ECC", default=0))
        value = ("on" if current == enabled else "off") + (f", {errors} uncorrected errors since boot"
                                                           if errors is not None else "")
        if errors:
            checks.append(Check(f"{name} ECC", "warn", value, "uncorrected memory errors: the GPU may need a reset "
                                                             "or replacement (nvidia-smi -q -d ECC)"))
        else:
            checks.append(Check(f"{name} ECC", "ok", value))
    return checks


def _wants_cuda(device: str) -> tuple[bool, int]:
    if device.startswith("cuda"):
        return True, int(device.split(":", 1)[1]) if ":" in device else 0
    if device == "auto":
        try:
            import torch

            return torch.cuda.is_available(), 0
        except ImportError:
            return False, 0
    return False, 0


def run_checks(*, window: float = DEFAULT_WINDOW_S, threads: int | None = None, device: str = "auto",
               proc: str = "/proc", sys: str = "/sys", nvml=None) -> list[Check]:
    """All checks: CPU load, busy processes, threads vs free cores, governor, turbo, SMT; GPU when on CUDA.

    ``threads``: the torch threads a run would use (None: torch's default here, importing torch).
    ``device``: ``auto`` (CUDA checks when torch sees a GPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``proc``/``sys``: roots of /proc and /sys; ``nvml``: the NVML module (tests pass fakes).
    """
    checks = _cpu_checks(proc, sys, window, threads)
    cuda, index = _wants_cuda(device)
    if cuda:
        sampler = NvmlSampler(index, nvml)
        try:
            checks += cuda_checks(sampler)
        finally:
            sampler.close()
    return checks


def is_contaminated(checks: list[Check]) -> bool:
    """True when any check failed: a run started now would be contaminated."""
    return any(c.status == "fail" for c in checks)


def machine_state(**kwargs) -> dict:
    """The checks as a JSON-able dict, ``{"checks": [...], "contaminated": bool}``, for a run's env.json.

    Takes :func:`run_checks`'s keywords; pass ``threads`` (and ``device``) of the run so that torch is
    not imported. Costs about ``window`` seconds (0.5 by default).
    """
    checks = run_checks(**kwargs)
    return {"checks": [asdict(c) for c in checks], "contaminated": is_contaminated(checks)}
