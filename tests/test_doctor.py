"""`txbench doctor`: pre-flight checks on fake /proc and /sys trees, a fake NVML and one real busy loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

import txbench.doctor as doctor
from tests.fake_nvml import FakeNvml
from txbench.cli import app
from txbench.measure.interference import CLK_TCK, proc_cpu_s

runner = CliRunner()
HOG = 4242


def machine(root, *, governor="performance", no_turbo="1", smt="0", load="0.10"):
    """A quiet 2-core machine: init and a sleeping shell, fixed uptime; returns (proc, sys) roots."""
    proc, sysfs = root / "proc", root / "sys"
    proc.mkdir(parents=True)
    (proc / "stat").write_text("cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 50 0 25 500 0 0 0 0 0 0\n"
                               "cpu1 50 0 25 500 0 0 0 0 0 0\n")
    (proc / "uptime").write_text("1000.00 1900.00\n")
    (proc / "loadavg").write_text(f"{load} 0.20 0.30 1/100 {HOG}\n")
    for pid, comm, ticks in ((1, "systemd", 300), (HOG, "python3", 500)):
        set_ticks(proc, pid, comm, ticks)
    cpu = sysfs / "devices/system/cpu"
    for i in range(2):
        (cpu / f"cpu{i}/cpufreq").mkdir(parents=True)
        if governor:
            (cpu / f"cpu{i}/cpufreq/scaling_governor").write_text(governor + "\n")
    if no_turbo is not None:
        (cpu / "intel_pstate").mkdir()
        (cpu / "intel_pstate/no_turbo").write_text(no_turbo + "\n")
    if smt is not None:
        (cpu / "smt").mkdir()
        (cpu / "smt/active").write_text(smt + "\n")
    return proc, sysfs


def set_ticks(proc, pid, comm, utime):
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) R 1 1 1 0 -1 0 0 0 0 0 {utime} 0 0 0 20 0 1 0 5 0 0\n")


@pytest.fixture
def hog_spins(monkeypatch):
    """During the sampling window, fake PID 4242 uses 98% of a core (instead of sleeping, the tree advances)."""
    def advance(proc):
        def wait(seconds):
            up = float((proc / "uptime").read_text().split()[0])
            (proc / "uptime").write_text(f"{up + seconds:.2f} 0\n")
            ticks = round(proc_cpu_s(HOG, str(proc)) * CLK_TCK)
            set_ticks(proc, HOG, "python3", ticks + round(0.98 * seconds * CLK_TCK))
        monkeypatch.setattr(doctor, "_wait", wait)
    return advance


def invoke(proc, sysfs, *args):
    return runner.invoke(app, ["doctor", "--proc-root", str(proc), "--sys-root", str(sysfs), "--window", "0.5",
                               "--device", "cpu", *args])


def by_name(checks):
    return {c["name"]: c for c in checks}


def test_quiet_machine_exits_zero(tmp_path):
    proc, sysfs = machine(tmp_path)
    r = invoke(proc, sysfs, "--threads", "2")
    assert r.exit_code == 0, r.output
    assert "no check failed" in r.output and "torch threads" in r.output


def test_busy_process_and_oversubscription_exit_one(tmp_path, hog_spins):
    proc, sysfs = machine(tmp_path)
    hog_spins(proc)
    r = invoke(proc, sysfs, "--threads", "2", "--format", "json")
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert set(out) == {"checks", "contaminated"} and out["contaminated"] is True
    assert all(set(c) == {"name", "status", "value", "advice"} for c in out["checks"])
    checks = by_name(out["checks"])
    assert checks["busy processes"]["status"] == "warn"
    assert checks["busy processes"]["value"] == "PID 4242 (python3, 98% of a core)"
    t = checks["torch threads"]
    assert t["status"] == "fail" and "1.02 of 2 cores free" in t["value"]
    assert t["advice"] == ("threads would share cores with other processes: set threads: [1] in the suite, "
                           "or stop PID 4242 (python3, 98% of a core)")
    # the table says the same, and one thread fits in the core the busy process leaves free
    r = invoke(proc, sysfs, "--threads", "2")
    assert r.exit_code == 1 and "a run started now would be contaminated" in r.output
    assert invoke(proc, sysfs, "--threads", "1").exit_code == 0


def test_machine_settings_warn_and_unreadable_sources_are_unknown(tmp_path):
    proc, sysfs = machine(tmp_path, governor="powersave", no_turbo="0", smt="1", load="3.5")
    checks = {c.name: c for c in doctor.run_checks(window=0.05, threads=1, device="cpu", proc=str(proc),
                                                   sys=str(sysfs))}
    assert (checks["CPU governor"].status, checks["CPU governor"].value) == ("warn", "powersave")
    assert (checks["turbo/boost"].status, checks["turbo/boost"].value) == ("warn", "on")
    assert (checks["SMT"].status, checks["SMT"].value) == ("ok", "on")
    assert checks["load average"].status == "warn"
    assert not doctor.is_contaminated(list(checks.values()))

    bare = doctor.run_checks(window=0.05, threads=1, device="cpu", proc=str(tmp_path / "none"),
                             sys=str(tmp_path / "none"))
    unknown = {c.name for c in bare if c.value == doctor.UNKNOWN}
    assert unknown == {"load average", "CPU governor", "turbo/boost", "SMT"}
    assert all(c.status == "ok" for c in bare)


def test_cpufreq_boost_file_is_read_when_intel_pstate_is_absent(tmp_path):
    proc, sysfs = machine(tmp_path, no_turbo=None)
    (sysfs / "devices/system/cpu/cpufreq").mkdir()
    (sysfs / "devices/system/cpu/cpufreq/boost").write_text("0\n")
    checks = {c.name: c for c in doctor.run_checks(window=0.05, threads=1, device="cpu", proc=str(proc),
                                                   sys=str(sysfs))}
    assert checks["turbo/boost"].value == "off"


def test_machine_state_is_json_for_env_json(tmp_path, hog_spins):
    proc, sysfs = machine(tmp_path)
    hog_spins(proc)
    state = doctor.machine_state(window=0.5, threads=2, device="cpu", proc=str(proc), sys=str(sysfs))
    assert json.loads(json.dumps(state)) == state
    assert state["contaminated"] is True and len(state["checks"]) == 6


def test_cuda_checks_through_a_fake_nvml(tmp_path):
    proc, sysfs = machine(tmp_path)
    nv = FakeNvml(persistence=0, app_clock=1500, default_app_clock=1980, pids=(7777,), reasons=0x40,
                  ecc_errors=2, sm=1400)
    checks = {c.name: c for c in doctor.run_checks(window=0.05, threads=1, device="cuda", proc=str(proc),
                                                   sys=str(sysfs), nvml=nv)}
    assert checks["GPU 0 persistence mode"].status == "warn"
    assert checks["GPU 0 application clocks"].value == "locked at 1500 MHz SM (default 1980)"
    assert checks["GPU 0 SM clock"].status == "warn" and "hw_thermal_slowdown" in checks["GPU 0 SM clock"].value
    assert (checks["GPU 0 other processes"].status, checks["GPU 0 other processes"].value) == ("fail", "PID 7777")
    assert checks["GPU 0 ECC"].status == "warn" and "2 uncorrected" in checks["GPU 0 ECC"].value
    assert doctor.is_contaminated(list(checks.values()))
    assert nv.inits == 0  # the sampler released NVML

    clean = doctor.run_checks(window=0.05, threads=1, device="cuda:0", proc=str(proc), sys=str(sysfs),
                              nvml=FakeNvml(unsupported={"nvmlDeviceGetEccMode", "nvmlDeviceGetApplicationsClock"}))
    gpu = {c.name: c for c in clean if c.name.startswith("GPU")}
    assert all(c.status == "ok" for c in gpu.values())
    assert gpu["GPU 0 ECC"].value == doctor.UNKNOWN and gpu["GPU 0 SM clock"].value.startswith("1980 of 1980 MHz")

    missing = doctor.run_checks(window=0.05, threads=1, device="cuda:2", proc=str(proc), sys=str(sysfs),
                                nvml=FakeNvml())
    assert [c.status for c in missing if c.name.startswith("GPU")] == ["warn"]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_real_busy_loop_is_listed():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while (proc_cpu_s(hog.pid) or 0.0) < 0.05 and time.monotonic() < deadline:
            time.sleep(0.02)
        procs, wall = doctor.busy_processes(window=0.5)
    finally:
        hog.kill()
        hog.wait(timeout=10)
    mine = [p for p in procs if p.pid == hog.pid]
    assert mine and mine[0].cores >= 0.2 and mine[0].name.startswith("python")
    assert os.getpid() not in {p.pid for p in procs} and 0.4 < wall < 5


def test_bad_format_and_device_are_usage_errors(tmp_path):
    proc, sysfs = machine(tmp_path)
    r = invoke(proc, sysfs, "--format", "xml")
    assert r.exit_code == 2 and "--format" in r.output
    r = invoke(proc, sysfs, "--device", "tpu")
    assert r.exit_code == 2 and "--device" in r.output
