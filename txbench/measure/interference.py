"""Interference: how much of the machine others used while a block of steps ran.

A leaf module (standard library only; ``pynvml`` is imported lazily, for CUDA only).
On a 2-core machine one other busy process made 2-thread torch steps 6-50x slower
(OpenMP threads wait at barriers for the one that lost its core), some with a tight
IQR: step times alone cannot tell. So a block of steps is bracketed by two snapshots
and the difference says what else ran.

CPU: :func:`cpu_snapshot` before and after a block, then :func:`cpu_block` ->
:class:`CpuInterference`. CUDA: :class:`NvmlSampler` ``.snapshot()`` before and after,
then :func:`gpu_block` -> :class:`GpuInterference`. Each result has ``to_dict()`` with
plain numbers, strings and bools for a Parquet row.
"""

from __future__ import annotations

import glob
import importlib
import os
import resource
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Iterable

__all__ = [
    "CLK_TCK", "MIN_BLOCK_S", "OTHER_CORES_MIN", "OVERSUB_TOLERANCE_CORES", "STEAL_FRAC_MAX",
    "GPU_CLOCK_RATIO_MIN", "THROTTLE_REASONS",
    "CpuSnapshot", "CpuInterference", "cpu_snapshot", "cpu_block", "proc_cpu_s",
    "GpuSnapshot", "GpuInterference", "NvmlSampler", "gpu_block", "decode_reasons", "BlockMonitor",
]

#: Clock ticks per second of the kernel's CPU accounting (USER_HZ, 100 on Linux: 10 ms per jiffy).
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: Shortest block (seconds) whose CPU numbers are trusted. /proc/stat counts in jiffies (10 ms), so a
#: block's system busy time is off by less than one jiffy per CPU that was busy: on 2 cores at most
#: 0.02 s, i.e. 0.1 core over 0.2 s, under :data:`OTHER_CORES_MIN`. Shorter blocks are still computed.
MIN_BLOCK_S = 0.2

#: Others must hold at least this many cores on average for a block to count as contaminated. Below it
#: the share is within the jiffy resolution of a short block and the background of a quiet machine
#: (daemons, the shell: 0.01-0.1 core measured here); a busy loop in another process holds ~1.0.
OTHER_CORES_MIN = 0.25

#: A block is oversubscribed when its threads exceed the cores others left free by more than this:
#: ``threads > cores - other_cores + OVERSUB_TOLERANCE_CORES``. Equal to OTHER_CORES_MIN so that with
#: threads == cores the two rules agree: others holding a quarter core already make one of the step's
#: threads share a core, and every OpenMP barrier then waits for it.
OVERSUB_TOLERANCE_CORES = 0.25

#: Steal (time the hypervisor gave this VM's vCPUs to someone else) above this fraction of all CPU
#: time contaminates a block: the step's threads lost that time without any process here using it.
STEAL_FRAC_MAX = 0.05

#: NVBench's rule (``nvbench/detail/measure_cold.cu``): samples taken while the SM clock is below 75%
#: of its maximum are throttled and not comparable with the rest.
GPU_CLOCK_RATIO_MIN = 0.75

#: NVML clocks-event (throttle) reasons that mean the GPU slowed down for a reason other than the
#: work itself: (name in NVML's API, our short name, value in the documented API). GPU idle (0x1),
#: application-clocks setting (0x2), sync boost (0x10) and display clock (0x100) are left out: they
#: are states the user chose or idleness, not interference.
THROTTLE_REASONS = (
    ("SwPowerCap", "sw_power_cap", 0x4),
    ("HwSlowdown", "hw_slowdown", 0x8),
    ("SwThermalSlowdown", "sw_thermal_slowdown", 0x20),
    ("HwThermalSlowdown", "hw_thermal_slowdown", 0x40),
    ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown", 0x80),
)


# ---------------------------------------------------------------------------------------------- CPU

@dataclass(frozen=True)
class CpuSnapshot:
    """Counters at one instant; two of them bracket a block (see :func:`cpu_block`).

    Jiffies come from /proc/stat: ``busy_jiffies`` = user + nice + system + irq + softirq (idle and
    iowait are not busy; steal is counted apart; guest time is already inside user and nice).
    ``total_jiffies`` = busy + idle + iowait + steal.
    """

    t_s: float  # time.monotonic()
    busy_jiffies: int  # system-wide (or of the chosen CPUs)
    steal_jiffies: int
    total_jiffies: int
    n_cpus: int  # CPUs the jiffies cover
    self_cpu_s: float  # this process, all threads (CLOCK_PROCESS_CPUTIME_ID)
    excluded_cpu_s: tuple[tuple[int, float], ...]  # (pid, CPU seconds) of exclude_pids that were readable
    invol_csw: int  # involuntary context switches of this process, all threads
    cpu_mhz: float | None  # mean current frequency of the CPUs, or None


@dataclass(frozen=True)
class CpuInterference:
    """What others did to the CPU during one block of steps."""

    wall_s: float
    other_cores: float  # CPU-seconds of processes other than this one and exclude_pids, per wall second
    self_cores: float  # this process's CPU-seconds per wall second (its threads' real parallelism)
    steal_frac: float  # stolen jiffies / all jiffies
    invol_csw_per_step: float
    cpu_mhz: float | None
    cores: int
    threads: int
    free_cores: float  # cores - other_cores
    oversubscribed: bool  # threads > free_cores + OVERSUB_TOLERANCE_CORES
    contaminated: bool
    reason: str | None

    def to_dict(self) -> dict:
        """Plain numbers, bools and strings (a Parquet row's columns)."""
        return {k: getattr(self, k) for k in (
            "wall_s", "other_cores", "self_cores", "steal_frac", "invol_csw_per_step", "cpu_mhz", "free_cores",
            "oversubscribed", "contaminated", "reason")}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat_jiffies(proc: str, cpus: Iterable[int] | None) -> tuple[int, int, int, int]:
    """(busy, steal, total, n_cpus) from /proc/stat: the aggregate line, or the sum of the chosen cpuN lines."""
    text = _read(os.path.join(proc, "stat")) or ""
    want = None if cpus is None else {f"cpu{c}" for c in cpus}
    busy = steal = total = 0
    per_cpu = [ln.split() for ln in text.splitlines() if ln.startswith("cpu") and not ln.startswith("cpu ")]
    if want is None:
        rows = [ln.split() for ln in text.splitlines() if ln.startswith("cpu ")]
        n = len(per_cpu)
    else:
        rows = [r for r in per_cpu if r[0] in want]
        n = len(rows)
    for _name, *vals in rows:
        v = [int(x) for x in vals[:8]] + [0] * (8 - len(vals[:8]))
        user, nice, system, idle, iowait, irq, softirq, st = v
        busy += user + nice + system + irq + softirq
        steal += st
        total += user + nice + system + idle + iowait + irq + softirq + st
    return busy, steal, total, max(n, 1)


def proc_cpu_s(pid: int, proc: str = "/proc") -> float | None:
    """CPU seconds (user + system, all threads) of process ``pid`` from ``<proc>/<pid>/stat``; None if gone."""
    text = _read(os.path.join(proc, str(pid), "stat"))
    if not text or ")" not in text:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after the comm, which may hold spaces and parentheses
    try:
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)
    except (IndexError, ValueError):
        return None


@lru_cache(maxsize=8)
def _freq_files(sys: str) -> tuple[str, ...]:
    # CPUs do not come and go between blocks; the glob alone costs ~100 us
    return tuple(glob.glob(os.path.join(sys, "devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")))


def _cpu_mhz(proc: str, sys: str) -> float | None:
    vals = []
    for p in _freq_files(sys):
        t = _read(p)
        try:
            vals.append(int(t) / 1000.0)  # kHz
        except (TypeError, ValueError):
            pass
    if not vals:
        for line in (_read(os.path.join(proc, "cpuinfo")) or "").splitlines():
            if line.startswith("cpu MHz"):
                try:
                    vals.append(float(line.split(":", 1)[1]))
                except ValueError:
                    pass
    return sum(vals) / len(vals) if vals else None


def cpu_snapshot(proc: str = "/proc", sys: str = "/sys", exclude_pids: Iterable[int] = (), *,
                 cpus: Iterable[int] | None = None, freq: bool = True) -> CpuSnapshot:
    """Take the counters :func:`cpu_block` compares.

    ``exclude_pids``: processes whose CPU use is not interference (the other side of an A/B pair, this
    worker's own helpers); a pid that cannot be read counts 0. ``cpus``: count only these CPUs' jiffies
    (pass the process's affinity when it is pinned to part of a larger machine); None = all CPUs.
    ``freq=False`` skips the frequency (on many-core machines /proc/cpuinfo costs milliseconds).
    ``proc`` and ``sys`` are the roots of /proc and /sys (tests point them at a fake tree); this
    process's own CPU time and context switches always come from the kernel directly.
    """
    busy, steal, total, n = _stat_jiffies(proc, cpus)
    excluded = []
    for pid in exclude_pids:
        s = proc_cpu_s(pid, proc)
        if s is not None:
            excluded.append((int(pid), s))
    return CpuSnapshot(
        t_s=time.monotonic(), busy_jiffies=busy, steal_jiffies=steal, total_jiffies=total, n_cpus=n,
        self_cpu_s=time.process_time(), excluded_cpu_s=tuple(excluded),
        invol_csw=resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw,
        cpu_mhz=_cpu_mhz(proc, sys) if freq else None,
    )


def cpu_block(before: CpuSnapshot, after: CpuSnapshot, *, cores: int, threads: int, steps: int) -> CpuInterference:
    """What others used of the CPU between two snapshots, and whether that contaminated the block.

    ``cores``: cores the block's process may use; ``threads``: torch threads it ran; ``steps``: steps
    in the block. Others' share = system busy time - this process's - exclude_pids', clamped at 0.
    Contaminated when others held at least :data:`OTHER_CORES_MIN` cores and the block was
    oversubscribed (its threads had to share cores with them), or steal reached :data:`STEAL_FRAC_MAX`.
    Trust it for blocks of at least :data:`MIN_BLOCK_S`.
    """
    wall = max(after.t_s - before.t_s, 0.0)
    busy_s = max(after.busy_jiffies - before.busy_jiffies, 0) / CLK_TCK
    self_s = max(after.self_cpu_s - before.self_cpu_s, 0.0)
    prev = dict(before.excluded_cpu_s)
    # a pid missing before started inside the block (all its time is in it); one missing after counts 0
    excl_s = sum(max(s - prev.get(pid, 0.0), 0.0) for pid, s in after.excluded_cpu_s)
    other = max(busy_s - self_s - excl_s, 0.0) / wall if wall > 0 else 0.0
    d_total = after.total_jiffies - before.total_jiffies
    steal = max(after.steal_jiffies - before.steal_jiffies, 0) / d_total if d_total > 0 else 0.0
    mhz = [m for m in (before.cpu_mhz, after.cpu_mhz) if m is not None]
    free = cores - other
    oversub = threads > free + OVERSUB_TOLERANCE_CORES
    reasons = []
    if oversub and other >= OTHER_CORES_MIN:
        reasons.append(f"other processes held {other:.2f} of {cores} cores while {threads} threads ran")
    if steal >= STEAL_FRAC_MAX:
        reasons.append(f"steal {steal:.0%}")
    return CpuInterference(
        wall_s=wall, other_cores=other, self_cores=self_s / wall if wall > 0 else 0.0, steal_frac=steal,
        invol_csw_per_step=max(after.invol_csw - before.invol_csw, 0) / max(steps, 1),
        cpu_mhz=sum(mhz) / len(mhz) if mhz else None, cores=cores, threads=threads, free_cores=free,
        oversubscribed=oversub, contaminated=bool(reasons), reason="; ".join(reasons) or None,
    )


# --------------------------------------------------------------------------------------------- CUDA

def _const(nvml, names: Iterable[str], default):
    for n in names:
        if hasattr(nvml, n):
            return getattr(nvml, n)
    return default


def _reason_bits(nvml) -> tuple[tuple[str, int], ...]:
    """(short name, bit) of :data:`THROTTLE_REASONS`, read from the module (event or older throttle names)."""
    return tuple((short, int(_const(nvml, (f"nvmlClocksEventReason{n}", f"nvmlClocksThrottleReason{n}"), v)))
                 for n, short, v in THROTTLE_REASONS)


def decode_reasons(mask: int | None, nvml=None) -> tuple[str, ...]:
    """Names of the interfering clocks-event reasons set in ``mask`` (idle and app-clock settings ignored)."""
    if not mask:
        return ()
    bits = _reason_bits(nvml) if nvml is not None else tuple((s, v) for _, s, v in THROTTLE_REASONS)
    return tuple(name for name, bit in bits if mask & bit)


@dataclass(frozen=True)
class GpuSnapshot:
    """One NVML reading of a GPU. A field NVML does not support on this device is None."""

    t_s: float  # time.monotonic()
    sm_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    event_reasons: int | None  # raw clocks-event (throttle) reasons bitmask
    reasons: tuple[str, ...]  # interfering reasons decoded from it
    temperature_c: int | None
    power_w: float | None
    other_pids: tuple[int, ...]  # compute processes on the device other than this one and exclude_pids

    @property
    def clock_ratio(self) -> float | None:
        """Current SM clock / maximum SM clock."""
        if self.sm_clock_mhz is None or not self.max_sm_clock_mhz:
            return None
        return self.sm_clock_mhz / self.max_sm_clock_mhz


@dataclass(frozen=True)
class GpuInterference:
    """What slowed the GPU down during one block of steps, as far as its snapshots saw."""

    wall_s: float
    clock_ratio_min: float | None  # lowest SM clock / max SM clock among the snapshots
    sm_clock_mhz_min: int | None
    reasons: tuple[str, ...]  # interfering clocks-event reasons active in any snapshot
    temperature_c_max: int | None
    power_w_max: float | None
    other_pids: tuple[int, ...]  # other compute processes seen in any snapshot
    contaminated: bool
    reason: str | None

    def to_dict(self) -> dict:
        """Plain numbers, bools and strings (a Parquet row's columns); lists joined with commas."""
        return {"wall_s": self.wall_s, "clock_ratio_min": self.clock_ratio_min,
                "sm_clock_mhz_min": self.sm_clock_mhz_min, "throttle_reasons": ",".join(self.reasons),
                "temperature_c_max": self.temperature_c_max, "power_w_max": self.power_w_max,
                "other_processes": len(self.other_pids), "other_pids": ",".join(map(str, self.other_pids)),
                "contaminated": self.contaminated, "reason": self.reason}


class NvmlSampler:
    """Reads one GPU's clocks, throttle reasons, temperature, power and processes through NVML.

    ``nvml``: the NVML module (``pynvml`` from nvidia-ml-py when None, imported here; tests pass a fake).
    When NVML cannot be used ``available`` is False and ``reason`` says why; :meth:`snapshot` then raises.
    Each reading NVML does not support on a device comes back as None instead of failing the snapshot.
    """

    def __init__(self, index: int = 0, nvml=None, *, exclude_pids: Iterable[int] = ()):
        self.index = index
        self.exclude_pids = frozenset(int(p) for p in exclude_pids) | {os.getpid()}
        self.nvml = nvml
        self.handle = None
        self.available = False
        self.reason: str | None = None
        if self.nvml is None:
            try:
                self.nvml = importlib.import_module("pynvml")
            except ImportError:
                self.reason = "pynvml is not installed (pip install nvidia-ml-py)"
                return
        try:
            self.nvml.nvmlInit()
            self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as e:  # NVMLError (no driver, no such device) or a broken install
            self.reason = f"NVML cannot open GPU {index}: {e}"
            return
        self.available = True

    def call(self, fn: str, *args):
        """``nvml.<fn>(handle, *args)``, or None when the function is missing or NVML refuses it."""
        f = getattr(self.nvml, fn, None)
        if f is None or self.handle is None:
            return None
        try:
            return f(self.handle, *args)
        except Exception:  # NVMLError_NotSupported and kin: a missing reading, not a failed snapshot
            return None

    def const(self, *names: str, default):
        """A constant of the NVML module by its first present name, else ``default`` (the documented value)."""
        return _const(self.nvml, names, default)

    def snapshot(self) -> GpuSnapshot:
        """One reading of the device (a few NVML calls; see the module docs for costs)."""
        if not self.available:
            raise RuntimeError(self.reason or "NVML is not available")
        sm = self.const("NVML_CLOCK_SM", default=1)
        mask = self.call("nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None:
            mask = self.call("nvmlDeviceGetCurrentClocksThrottleReasons")
        power_mw = self.call("nvmlDeviceGetPowerUsage")
        procs = self.call("nvmlDeviceGetComputeRunningProcesses") or []
        others = tuple(sorted({int(p.pid) for p in procs if int(p.pid) not in self.exclude_pids}))
        return GpuSnapshot(
            t_s=time.monotonic(), sm_clock_mhz=self.call("nvmlDeviceGetClockInfo", sm),
            max_sm_clock_mhz=self.call("nvmlDeviceGetMaxClockInfo", sm),
            event_reasons=mask, reasons=decode_reasons(mask, self.nvml),
            temperature_c=self.call("nvmlDeviceGetTemperature", self.const("NVML_TEMPERATURE_GPU", default=0)),
            power_w=power_mw / 1000.0 if power_mw is not None else None, other_pids=others,
        )

    def close(self) -> None:
        """Release NVML (its init is reference-counted)."""
        if self.available:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.available = False

    def __enter__(self) -> NvmlSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def gpu_block(before: GpuSnapshot, after: GpuSnapshot, *, during: Iterable[GpuSnapshot] = ()) -> GpuInterference:
    """Combine the snapshots around (and optionally inside) a block into a verdict.

    Contaminated when the SM clock in any snapshot was below :data:`GPU_CLOCK_RATIO_MIN` of its maximum
    (NVBench's rule), a thermal, power or hardware-slowdown reason was active, or another compute process
    ran on the device. NVML reports reasons as of each reading, so a block sees only its snapshots.
    """
    snaps = [before, *during, after]
    ratios = [(s.clock_ratio, s.sm_clock_mhz) for s in snaps if s.clock_ratio is not None]
    ratio_min, clock_min = min(ratios) if ratios else (None, None)
    reasons = tuple(sorted({r for s in snaps for r in s.reasons}))
    others = tuple(sorted({p for s in snaps for p in s.other_pids}))
    temps = [s.temperature_c for s in snaps if s.temperature_c is not None]
    powers = [s.power_w for s in snaps if s.power_w is not None]
    why = []
    if ratio_min is not None and ratio_min < GPU_CLOCK_RATIO_MIN:
        mx = next(s.max_sm_clock_mhz for s in snaps if s.clock_ratio == ratio_min)
        why.append(f"SM clock at {ratio_min:.0%} of max ({clock_min} of {mx} MHz)")
    if reasons:
        why.append("clocks slowed: " + ", ".join(reasons))
    if others:
        why.append(f"{len(others)} other process(es) on the GPU (pid {', '.join(map(str, others))})")
    return GpuInterference(
        wall_s=max(after.t_s - before.t_s, 0.0), clock_ratio_min=ratio_min, sm_clock_mhz_min=clock_min,
        reasons=reasons, temperature_c_max=max(temps) if temps else None,
        power_w_max=max(powers) if powers else None, other_pids=others,
        contaminated=bool(why), reason="; ".join(why) or None,
    )



# ------------------------------------------------------------------------------------------- blocks

class BlockMonitor:
    """Brackets consecutive blocks of steps with snapshots: :meth:`start`, then :meth:`close` per block.

    ``cores``: the CPUs this process may run on (its affinity); their jiffies alone are counted when they
    are fewer than the machine's. ``threads``: torch threads the steps run. ``gpu``: an
    :class:`NvmlSampler` (CUDA), or None. A block closes where the next begins, so no time goes unseen.
    A block shorter than :data:`MIN_BLOCK_S` (the last one, cut by a time cap) is called contaminated
    only when the others' share clears the threshold by more than one 10 ms tick per CPU over the
    block: /proc/stat's ticks cannot tell one busy core from none over a few of them.
    """

    def __init__(self, *, cores: list[int], threads: int, gpu: NvmlSampler | None = None,
                 exclude_pids: Iterable[int] = (), proc: str = "/proc", sys: str = "/sys"):
        self.cores, self.threads, self.gpu = list(cores), threads, gpu
        self.exclude_pids, self.proc, self.sys = tuple(exclude_pids), proc, sys
        total = os.cpu_count() or len(self.cores)
        self._cpus = self.cores if len(self.cores) < total else None
        # the clock where cpufreq says it cheaply (/proc/cpuinfo costs milliseconds on many cores and is a
        # nominal figure on VMs like the development one)
        self._freq = bool(_freq_files(sys)) and len(self.cores) <= 64
        self._cpu: CpuSnapshot | None = None
        self._gpu: GpuSnapshot | None = None

    def _snap(self) -> tuple[CpuSnapshot, GpuSnapshot | None]:
        cpu = cpu_snapshot(self.proc, self.sys, self.exclude_pids, cpus=self._cpus, freq=self._freq)
        return cpu, self.gpu.snapshot() if self.gpu is not None and self.gpu.available else None

    def start(self) -> None:
        self._cpu, self._gpu = self._snap()

    def close(self, steps: int) -> dict:
        """The block since the last start/close: plain figures plus ``contaminated`` and ``reason``."""
        cpu, gpu = self._snap()
        before, after = self._cpu, cpu
        if self._cpus is not None:
            # only this process's own cores are read: processes pinned to the others (the other side of a
            # parallel A/B pair) never show in these jiffies, so their CPU time must not be taken off them
            before, after = replace(before, excluded_cpu_s=()), replace(after, excluded_cpu_s=())
        c = cpu_block(before, after, cores=len(self.cores), threads=self.threads, steps=steps)
        prev = dict(self._cpu.excluded_cpu_s)
        excl = sum(max(v - prev.get(pid, 0.0), 0.0) for pid, v in cpu.excluded_cpu_s)
        out = {"steps": steps, **c.to_dict(), "excluded_cores": excl / c.wall_s if c.wall_s > 0 else 0.0}
        short = c.wall_s < MIN_BLOCK_S
        if short:  # a block cut short by a time cap: trusted only beyond one 10 ms tick per CPU of doubt
            err = (len(self._cpus) if self._cpus else (os.cpu_count() or 1)) / (CLK_TCK * max(c.wall_s, 1e-3))
            cpu_hit = c.oversubscribed and c.other_cores - err >= OTHER_CORES_MIN
        else:
            cpu_hit = c.contaminated
        reasons = [c.reason] if cpu_hit and c.reason else []
        if gpu is not None and self._gpu is not None:
            g = gpu_block(self._gpu, gpu)
            out.update({f"gpu_{k}": v for k, v in g.to_dict().items() if k not in ("wall_s", "contaminated",
                                                                                      "reason")})
            if g.contaminated:
                reasons.append(g.reason)
        out["contaminated"] = bool(reasons)
        out["reason"] = "; ".join(reasons) if reasons else None
        out["short"] = short
        self._cpu, self._gpu = cpu, gpu
        return out

    def quiet(self, window_s: float = 0.5) -> dict:
        """One idle window of this process: would a block taken now be contaminated? (the block's dict)"""
        self.start()
        time.sleep(window_s)
        return self.close(0)
