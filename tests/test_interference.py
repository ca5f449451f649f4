"""Interference measurement: CPU counters from (fake and real) /proc, GPU readings from a fake NVML."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from tests.fake_nvml import FakeNvml
from txbench.measure.interference import (
    CLK_TCK,
    GPU_CLOCK_RATIO_MIN,
    CpuSnapshot,
    NvmlSampler,
    cpu_block,
    cpu_snapshot,
    decode_reasons,
    gpu_block,
    proc_cpu_s,
)


def fake_tree(root, *, stat_cpu="cpu  100 5 50 1000 20 3 2 10 7 0", pids=None, freqs_khz=(), cpuinfo_mhz=()):
    """A /proc and /sys under ``root``: two CPUs, processes given as {pid: (comm, utime, stime)}."""
    proc, sysfs = root / "proc", root / "sys"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "stat").write_text(f"{stat_cpu}\ncpu0 60 5 20 500 10 1 1 5 0 0\ncpu1 40 0 30 500 10 2 1 5 7 0\n"
                               "intr 12345\nctxt 999\n")
    for pid, (comm, ut, st) in (pids or {}).items():
        (proc / str(pid)).mkdir(exist_ok=True)
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) R 1 1 1 0 -1 0 0 0 0 0 {ut} {st} 0 0 20 0 1 0 5 0 0\n")
    for i, f in enumerate(freqs_khz):
        d = sysfs / f"devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True, exist_ok=True)
        (d / "scaling_cur_freq").write_text(f"{f}\n")
    if cpuinfo_mhz:
        (proc / "cpuinfo").write_text("".join(f"processor\t: {i}\ncpu MHz\t\t: {m}\n\n"
                                              for i, m in enumerate(cpuinfo_mhz)))
    return str(proc), str(sysfs)


def snap(t, busy, self_s=0.0, excluded=(), steal=0, total=None, csw=0, mhz=None):
    """A CpuSnapshot with jiffies given in seconds of CPU time."""
    return CpuSnapshot(t_s=t, busy_jiffies=round(busy * CLK_TCK), steal_jiffies=round(steal * CLK_TCK),
                       total_jiffies=round((total if total is not None else 2 * t) * CLK_TCK), n_cpus=2,
                       self_cpu_s=self_s, excluded_cpu_s=tuple(excluded), invol_csw=csw, cpu_mhz=mhz)


# ---------------------------------------------------------------------------------------- snapshots

def test_snapshot_reads_proc_stat_process_times_and_frequency(tmp_path):
    proc, sysfs = fake_tree(tmp_path, pids={4242: ("my (odd) name", 250, 50)}, freqs_khz=(2_000_000, 3_000_000))
    s = cpu_snapshot(proc, sysfs, exclude_pids=[4242, 999])  # 999 does not exist: left out, counts 0
    assert s.busy_jiffies == 100 + 5 + 50 + 3 + 2  # user nice system irq softirq; idle, iowait, steal are not busy
    assert s.steal_jiffies == 10
    assert s.total_jiffies == 160 + 1000 + 20 + 10  # guest (7) is already inside user
    assert s.n_cpus == 2
    assert s.excluded_cpu_s == ((4242, 300 / CLK_TCK),)
    assert s.cpu_mhz == pytest.approx(2500.0)
    assert s.invol_csw >= 0 and s.self_cpu_s > 0

    one = cpu_snapshot(proc, sysfs, cpus=[1])
    assert (one.busy_jiffies, one.steal_jiffies, one.n_cpus) == (40 + 0 + 30 + 2 + 1, 5, 1)


def test_frequency_falls_back_to_cpuinfo_then_none(tmp_path):
    proc, sysfs = fake_tree(tmp_path / "a", cpuinfo_mhz=(2400.0, 2600.0))
    assert cpu_snapshot(proc, sysfs).cpu_mhz == pytest.approx(2500.0)
    proc, sysfs = fake_tree(tmp_path / "b")
    assert cpu_snapshot(proc, sysfs).cpu_mhz is None
    assert cpu_snapshot(proc, sysfs, freq=False).cpu_mhz is None


def test_proc_cpu_s_of_a_missing_or_garbled_process_is_none(tmp_path):
    proc, _ = fake_tree(tmp_path)
    assert proc_cpu_s(1234, proc) is None
    os.makedirs(os.path.join(proc, "77"))
    with open(os.path.join(proc, "77", "stat"), "w") as f:
        f.write("77 (x) R 1")
    assert proc_cpu_s(77, proc) is None


# ------------------------------------------------------------------------------------------- blocks

def test_another_process_holding_a_core_contaminates_a_two_thread_block():
    # 1 s of wall on 2 cores: 1.9 CPU-s busy, 0.95 of it ours -> others held 0.95 of a core
    r = cpu_block(snap(10.0, 0.0, csw=5), snap(11.0, 1.9, self_s=0.95, csw=45), cores=2, threads=2, steps=4)
    assert r.wall_s == pytest.approx(1.0)
    assert r.other_cores == pytest.approx(0.95)
    assert r.self_cores == pytest.approx(0.95)
    assert r.free_cores == pytest.approx(1.05)
    assert r.oversubscribed and r.contaminated
    assert r.reason == "other processes held 0.95 of 2 cores while 2 threads ran"
    assert r.invol_csw_per_step == 10.0
    # one thread fits in the core the other process left free
    r1 = cpu_block(snap(10.0, 0.0), snap(11.0, 1.9, self_s=0.95), cores=2, threads=1, steps=4)
    assert not r1.oversubscribed and not r1.contaminated and r1.reason is None


def test_excluded_pids_are_not_interference_and_a_vanished_one_counts_zero():
    before = snap(0.0, 0.0, excluded=[(100, 5.0), (200, 1.0)])
    after = snap(0.5, 1.0, self_s=0.5, excluded=[(100, 5.45)])  # 200 exited inside the block
    r = cpu_block(before, after, cores=2, threads=2, steps=1)
    assert r.other_cores == pytest.approx(0.1)  # (1.0 - 0.5 - 0.45) / 0.5
    assert not r.contaminated
    # a pid that appears only after started inside the block: all its time counts as excluded
    r = cpu_block(snap(0.0, 0.0), snap(0.5, 1.0, self_s=0.5, excluded=[(300, 0.4)]), cores=2, threads=2, steps=1)
    assert r.other_cores == pytest.approx(0.2)


def test_own_time_above_the_jiffy_count_clamps_at_zero():
    r = cpu_block(snap(0.0, 0.0), snap(0.2, 0.30, self_s=0.33), cores=2, threads=2, steps=2)
    assert r.other_cores == 0.0 and not r.contaminated


def test_steal_contaminates_even_without_other_processes():
    r = cpu_block(snap(0.0, 0.0), snap(1.0, 1.0, self_s=1.0, steal=0.24, total=2.0), cores=2, threads=1, steps=1)
    assert r.steal_frac == pytest.approx(0.12)
    assert r.contaminated and r.reason == "steal 12%"


def test_to_dict_is_plain_values():
    d = cpu_block(snap(0.0, 0.0, mhz=2000.0), snap(1.0, 1.9, self_s=0.95, mhz=3000.0),
                  cores=2, threads=2, steps=4).to_dict()
    assert set(d) == {"wall_s", "other_cores", "self_cores", "steal_frac", "invol_csw_per_step", "cpu_mhz",
                      "free_cores", "oversubscribed", "contaminated", "reason"}
    assert d["cpu_mhz"] == 2500.0
    assert all(v is None or type(v) in (int, float, bool, str) for v in d.values())


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not os.path.exists("/proc/stat"), reason="needs 2 cores and /proc")
def test_a_real_busy_loop_in_another_process_is_seen_and_excluding_it_removes_it():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while (proc_cpu_s(hog.pid) or 0.0) < 0.05 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the hog is past interpreter start-up and spinning
        before = cpu_snapshot(exclude_pids=[hog.pid])
        end = time.monotonic() + 0.6
        while time.monotonic() < end:  # this process keeps one core busy, as a one-thread step would
            pass
        after = cpu_snapshot(exclude_pids=[hog.pid])
    finally:
        hog.kill()
        hog.wait(timeout=10)
    counted = cpu_block(dataclasses.replace(before, excluded_cpu_s=()), dataclasses.replace(after, excluded_cpu_s=()),
                        cores=2, threads=2, steps=3)
    # with this process spinning on one core, the always-runnable hog (or another tenant) held the other
    assert counted.other_cores >= 0.5
    assert counted.contaminated and "of 2 cores" in counted.reason
    excluded = cpu_block(before, after, cores=2, threads=2, steps=3)
    hog_cores = (after.excluded_cpu_s[0][1] - before.excluded_cpu_s[0][1]) / excluded.wall_s
    assert hog_cores >= 0.2  # CFS gives an always-runnable loop its share even on a loaded machine
    assert counted.other_cores - excluded.other_cores == pytest.approx(min(hog_cores, counted.other_cores), abs=0.02)


def test_snapshot_costs_well_under_a_millisecond():
    cpu_snapshot()
    t = time.perf_counter()
    for _ in range(50):
        cpu_snapshot()
    assert (time.perf_counter() - t) / 50 < 0.005  # generous for a loaded shared machine; ~50-200 us here


# --------------------------------------------------------------------------------------------- NVML

def test_nvml_sampler_decodes_throttle_reasons_and_the_clock_ratio():
    nv = FakeNvml(sm=1200, max_sm=1980, reasons=0x1 | 0x2 | 0x20 | 0x4, temp=88, power_mw=310_500)
    s = NvmlSampler(0, nv)
    assert s.available and s.reason is None
    snap0 = s.snapshot()
    assert snap0.reasons == ("sw_power_cap", "sw_thermal_slowdown")  # idle and app-clock setting ignored
    assert snap0.clock_ratio == pytest.approx(1200 / 1980)
    assert (snap0.temperature_c, snap0.power_w) == (88, 310.5)
    g = gpu_block(snap0, s.snapshot())
    assert g.clock_ratio_min < GPU_CLOCK_RATIO_MIN and g.contaminated
    assert "SM clock at 61% of max (1200 of 1980 MHz)" in g.reason
    assert "sw_power_cap" in g.reason and g.to_dict()["throttle_reasons"] == "sw_power_cap,sw_thermal_slowdown"
    s.close()
    assert nv.inits == 0


def test_decode_reasons_uses_the_documented_values():
    assert decode_reasons(0x8 | 0x40 | 0x80) == ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
    assert decode_reasons(0x1 | 0x2 | 0x10 | 0x100) == ()
    assert decode_reasons(None) == ()


def test_other_compute_processes_are_listed_but_not_this_one_or_excluded_ones():
    nv = FakeNvml(pids=(os.getpid(), 5555, 6666))
    s = NvmlSampler(0, nv, exclude_pids=[6666])
    g = gpu_block(s.snapshot(), s.snapshot())
    assert g.other_pids == (5555,)
    assert g.contaminated and g.reason == "1 other process(es) on the GPU (pid 5555)"
    d = g.to_dict()
    assert (d["other_processes"], d["other_pids"]) == (1, "5555")


def test_a_clean_device_and_a_dip_seen_only_inside_the_block():
    nv = FakeNvml(sm=1950, max_sm=1980, reasons=0x1)
    s = NvmlSampler(0, nv)
    a, b = s.snapshot(), s.snapshot()
    g = gpu_block(a, b)
    assert not g.contaminated and g.reason is None and g.reasons == ()
    assert g.clock_ratio_min == pytest.approx(1950 / 1980)
    nv.sm = 1000
    dip = s.snapshot()
    assert gpu_block(a, b, during=[dip]).contaminated


def test_legacy_throttle_api_and_unsupported_readings():
    nv = FakeNvml(reasons=0x40, legacy=True, unsupported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetMaxClockInfo"})
    snap0 = NvmlSampler(0, nv).snapshot()
    assert snap0.reasons == ("hw_thermal_slowdown",)
    assert snap0.power_w is None and snap0.clock_ratio is None
    g = gpu_block(snap0, snap0)
    assert g.clock_ratio_min is None and g.contaminated


def test_sampler_unavailable_says_why():
    s = NvmlSampler(3, FakeNvml(devices=1))
    assert not s.available and "GPU 3" in s.reason
    with pytest.raises(RuntimeError):
        s.snapshot()
    try:
        import pynvml  # noqa: F401
    except ImportError:
        missing = NvmlSampler(0)
        assert not missing.available and "nvidia-ml-py" in missing.reason


def test_a_monitor_pinned_to_its_own_cores_does_not_take_the_other_sides_time_off_them(monkeypatch):
    # parallel A/B: this side pinned to core 0, the other side (excluded) busy on core 1, a hog sharing core 0
    import os

    from txbench.measure import interference as I

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs for a monitor of one of them")
    snaps = iter([snap(0.0, 0.0, self_s=0.0, excluded=[(77, 0.0)], total=1),
                  snap(1.0, 1.0, self_s=0.5, excluded=[(77, 1.0)], total=1)])
    monkeypatch.setattr(I, "cpu_snapshot", lambda *a, **kw: next(snaps))
    mon = I.BlockMonitor(cores=[0], threads=1, exclude_pids=[77])
    mon.start()
    block = mon.close(10)
    assert block["other_cores"] == pytest.approx(0.5) and block["contaminated"]
    assert block["excluded_cores"] == pytest.approx(1.0)  # what the other side held, reported apart
