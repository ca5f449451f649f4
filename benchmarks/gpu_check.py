"""txbench's CUDA path in one command: the prepared GPU check, and its CPU rehearsal.

    bash benchmarks/gpu_check.sh OUT_DIR            # on an H100/H200: at most 8 minutes
    bash benchmarks/gpu_check.sh OUT_DIR --dry-run  # every step on CPU at tiny sizes (CI runs this)
    python benchmarks/gpu_check.py OUT_DIR [--dry-run] [--budget-s 450]

Steps (each in a child process with its own time budget; a step that fails or runs out of time is
reported with its first error line and the check goes on):

  1 pytest      ``pytest -m gpu`` over the test files that carry the gpu marker
  2 list        ``txbench list``: which attention implementations and precisions run, and why not
  3 sweep       bf16 reference decoder, seq_len 1024..8192 x every forced attention (suite
                benchmarks/gpu_check/sweep.yaml), plus a Hugging Face Llama with flash_attention_2
                (hf.yaml); every point ok or a typed status; attention_verified per forced backend;
                kernel names per implementation -> gpu_kernel_names.json
  4 timing      txbench's CUDA-event median vs torch.utils.benchmark and triton's do_bench (goal 2%)
  5a mfu        MFU of a ~350M-parameter GPT at T=2048, bf16, sdpa_flash (goal >= 45%)
  5b flash      SDPA flash forward+backward TFLOP/s at T=4096 vs FlashAttention-2's published ~335
  6 oom         a point too big for the GPU is recorded oom with its peak and its allocator snapshot
                (memory_snapshot); the next point is ok
  6b ddp       DDP and FSDP2 points through torchrun on NCCL (one rank per GPU, all GPUs with
                ``--devices all``): ok, backend nccl, the same first-step loss as one process, the
                communication category and its exposed share (suite benchmarks/gpu_check/ddp.yaml)
  7 profile     the profiler pass: GPU busy/idle per step, kernel launches, categories, top kernels,
                one Perfetto trace kept
  8 report      ``txbench report`` of the sweep

Every txbench run goes through the real command line (``python -m txbench run SUITE``). OUT_DIR
gets at most 8 files (summary.txt, summary.json, points.parquet, ops.parquet, report.html,
gpu_kernel_names.json, one trace, and gpu_check_work.tar.gz with everything else), none over
16 MiB. The summary is printed at the end. Exit code: 0 when no step ended in ``fail`` or
``error``, 1 otherwise, 2 when a GPU run finds no CUDA device.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SUITES = HERE / "gpu_check"

SUMMARY_TXT = "summary.txt"
SUMMARY_JSON = "summary.json"
KERNELS_JSON = "gpu_kernel_names.json"
ARCHIVE = "gpu_check_work.tar.gz"
TRACE = "trace.json.gz"
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
KERNELS_FORMAT = "txbench-kernel-names/1"
#: Columns of one kernel row, in the order of tests/data/gpu_kernel_names.txt.
KERNEL_COLUMNS = ("category", "region", "fwd_name", "name")

#: A step's outcome. warn: ran, a performance goal missed. fail: ran, a correctness check failed.
STATUSES = ("ok", "warn", "fail", "error", "skipped")
FORCED = ("sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex")
SWEEP_ATTENTIONS = ("naive",) + FORCED
NEEDS_CUDA = "skipped: needs CUDA"
FA2_H100_TFLOPS = 335.0  # FlashAttention-2 (Dao 2023), forward+backward, H100, head dim 128, no mask
MFU_GOAL = 0.45
TIMING_GOAL = 0.02
WIDTH = 100

# (key, title, budget on GPU in s, budget in the dry run in s). The GPU budgets add up to 445 s; the dry
# run's only stop a hang, generous for a CPU shared with other jobs (they run in 2-3 minutes in all)
STEPS = (
    ("pytest", "1 pytest -m gpu", 40, 120),
    ("list", "2 txbench list", 35, 120),
    ("sweep", "3 attention sweep", 155, 300),
    ("timing", "4 timing agreement", 35, 120),
    ("mfu", "5a MFU 350M GPT", 40, 120),
    ("flash", "5b SDPA flash TFLOP/s", 15, 60),
    ("oom", "6 OOM then ok", 30, 120),
    ("ddp", "6b DDP/FSDP2 on NCCL", 55, 180),  # 3 torch imports (worker, 2 torchruns) and NCCL set-up
    ("profile", "7 profiler pass", 25, 120),
    ("report", "8 report and files", 15, 120),
)

# --set overrides that shrink each suite to a CPU rehearsal (the suites themselves are GPU-sized)
_TINY_MODEL = ["model.d_model=64", "model.n_layers=1", "model.n_heads=2", "model.vocab_size=256",
               "model.max_seq_len=256"]
_TINY_MEASURE = ["measure.warmup_s=0", "measure.warmup_min_steps=1", "measure.min_steps=3", "measure.max_steps=5",
                 "measure.max_s=0.3", "measure.timeout_s=60", "measure.memory=false"]
DRY_SETS = {
    "sweep": _TINY_MODEL + _TINY_MEASURE + ["sweep.seq_len=[64]"],
    "hf": _TINY_MODEL + _TINY_MEASURE + ["model.n_heads=4", "model.hf.num_key_value_heads=2", "sweep.seq_len=[64]"],
    "mfu": _TINY_MODEL + _TINY_MEASURE + ["model.n_layers=2", "sweep.seq_len=[128]", "sweep.batch_size=[2]"],
    "oom": _TINY_MODEL + _TINY_MEASURE + [
        "sweep.seq_len=[128,64]", "sweep.batch_size=[4,2]",
        "exclude=[{seq_len: 128, batch_size: 2}, {seq_len: 64, batch_size: 4}]"],
    "profile": _TINY_MODEL + _TINY_MEASURE + ["sweep.seq_len=[64]"],
    "ddp": _TINY_MODEL + _TINY_MEASURE + ["sweep.seq_len=[64]", "sweep.precision=[fp32]"],
}
# the rehearsal cannot exhaust CPU memory on a shared machine: txbench's fault injection raises the
# allocator's out-of-memory error while the first point builds, and the sweep must record and survive it
DRY_OOM_FAULT = json.dumps([{"match": {"seq_len": 128}, "action": "oom"}])


# --------------------------------------------------------------------------- small helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _cut(text, n: int = 90) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _ms(v) -> str:
    return "-" if v is None or v != v else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


def _gib(v) -> str:
    return "-" if v is None or v != v else f"{v / 2**30:.2f} GiB"


def _short_reason(text) -> str:
    """An unsupported reason without txbench's "<impl> cannot train causal attention in <dtype> on <dev>: " lead."""
    return re.sub(r"^\S+ cannot train (causal|non-causal) attention in torch\.\w+ on \w+: ", "", str(text or ""))


def first_error_line(text: str) -> str:
    """The line that says what went wrong: an exception's message, else the last non-empty line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^([\w.]+(Error|Exception|Interrupt)|error)\b", ln):
            return _cut(ln, 200)
    return _cut(lines[-1], 200) if lines else "(no output)"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TXBENCH_FAULT", None)
    if env.get("TXBENCH_GPU_CHECK_DRY") == "1":
        # the rehearsal runs on a small shared CPU, where two spinning threads are many times slower than one
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_cmd(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` in ROOT in a process group of its own; stderr to ``log``. Returns (rc or None on timeout, stdout).

    On timeout the group gets SIGINT (txbench stores what finished), then SIGKILL.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as err:
        err.write(f"$ {' '.join(cmd)}\n".encode())
        err.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or _env(), stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=max(timeout, 1))
            return proc.returncode, out.decode(errors="replace")
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGINT, 8), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    out, _ = proc.communicate(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            err.write(f"\n[gpu_check] timed out after {timeout:.0f} s; process group {proc.pid} stopped\n".encode())
            return None, ""


class Ctx:
    """What a step knows: the output folders, the mode and its own deadline."""

    def __init__(self, out: Path, dry: bool, deadline: float):
        self.out, self.dry, self.deadline = out, dry, deadline
        self.work = out / "work"
        self.logs = self.work / "logs"
        self.device = "cpu" if dry else "cuda"
        env_file = self.work / "env.json"
        self.env = json.loads(env_file.read_text()) if env_file.exists() else {}

    def left(self, reserve: float = 3.0) -> float:
        return max(self.deadline - time.monotonic() - reserve, 1.0)

    def txbench(self, args: list[str], log: str, timeout: float | None = None, env: dict | None = None):
        return run_cmd([sys.executable, "-m", "txbench", *args], self.logs / f"{log}.log",
                       min(timeout or 1e9, self.left()), env)

    def run_suite(self, name: str, *, trace: bool = False, profile: bool = True, env_extra: dict | None = None,
                  timeout: float | None = None, extra: list[str] | None = None) -> dict:
        """``txbench run benchmarks/gpu_check/<name>.yaml`` (shrunk by --set in the dry run); its stored tables."""
        import pandas as pd

        results = self.work / "results" / name
        args = ["run", str(SUITES / f"{name}.yaml"), "--results-dir", str(results), "--json", "--no-report"]
        args += extra or []
        args += ["--trace"] if trace else []
        args += [] if profile else ["--no-profile"]
        sets = DRY_SETS[name] + ["device=cpu"] if self.dry else []
        for s in sets:
            args += ["--set", s]
        env = _env()
        env.update(env_extra or {})
        t0 = time.monotonic()
        rc, out = self.txbench(args, f"run_{name}", timeout, env)
        wall = time.monotonic() - t0
        run_dirs = sorted(p.parent for p in results.glob("*/*/points.parquet"))
        res = {"name": name, "rc": rc, "wall_s": wall, "run_dir": None, "points": None, "ops": None,
               "error": None}
        if rc != 0:
            log = (self.logs / f"run_{name}.log").read_text(errors="replace")
            res["error"] = (f"timed out after {wall:.0f} s" if rc is None else f"exit {rc}") + ": " + \
                first_error_line(log)
        if run_dirs:
            res["run_dir"] = run_dirs[-1]
            res["points"] = pd.read_parquet(run_dirs[-1] / "points.parquet")
            ops = run_dirs[-1] / "ops.parquet"
            res["ops"] = pd.read_parquet(ops) if ops.exists() else pd.DataFrame()
        return res


def _result(status: str, lines: list[str], reason: str = "", **data) -> dict:
    assert status in STATUSES, status
    return {"status": status, "reason": reason, "lines": lines, "data": data}


def _worst(statuses) -> str:
    order = ("error", "fail", "warn", "ok", "skipped")
    statuses = list(statuses)
    return next((s for s in order if s in statuses), "ok")


def _plain(v):
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy scalars: np.True_ is not True
        v = v.item()
    return None if isinstance(v, float) and v != v else v


def _records(df) -> list[dict]:
    """DataFrame rows as dicts of plain Python values (NaN as None), without the per-step sample lists."""
    if df is None or not len(df):
        return []
    return [{k: _plain(v) for k, v in r.items() if not k.endswith("_samples")} for r in df.to_dict("records")]


# --------------------------------------------------------------------------- step 0: what this machine has

_PROBE = r"""
import importlib.util, json, platform, sys
import torch
cuda = torch.cuda.is_available()
out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": cuda,
       "cuda_version": torch.version.cuda, "device_name": torch.cuda.get_device_name(0) if cuda else None,
       "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
       "gpu_mem_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
       "cpu_threads": torch.get_num_threads()}
for mod in ("triton", "flash_attn", "transformers", "plotly", "pydantic"):
    out[mod] = importlib.util.find_spec(mod) is not None
print(json.dumps(out))
"""


def probe_env(work: Path) -> dict:
    rc, out = run_cmd([sys.executable, "-c", _PROBE], work / "logs" / "env.log", 60)
    env = json.loads(out.strip().splitlines()[-1]) if rc == 0 and out.strip() else {"error": "probe failed"}
    (work / "env.json").write_text(json.dumps(env, indent=1))
    return env


# --------------------------------------------------------------------------- step 1: pytest -m gpu


def step_pytest(ctx: Ctx) -> dict:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    if not files:
        return _result("error", [], "no test file carries the gpu marker")
    rc, out = run_cmd([sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-rfEs", "-p", "no:cacheprovider"],
                      ctx.logs / "pytest.log", ctx.left(), env={**_env(), "TXBENCH_CACHE_DIR": str(ctx.work / "cache")})
    (ctx.logs / "pytest.out").write_text(out)
    lines = [ln.strip("= ").strip() for ln in out.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", ln)),
                   None)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)",
                                                 summary or "")}
    shown = [f"pytest -m gpu {' '.join(files)}: {summary or 'no summary line'}"]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    shown += [_cut(ln, WIDTH - 2) for ln in failed[:4]]
    if rc is None:
        return _result("error", shown, "timed out (its budget)", counts=counts)
    if failed or counts.get("failed") or counts.get("error") or counts.get("errors"):
        return _result("fail", shown, first_error_line(failed[0] if failed else out), counts=counts)
    if rc not in (0, 5) or not summary:
        return _result("error", shown, f"pytest exit {rc}: {first_error_line(out)}", counts=counts)
    if not counts.get("passed") and counts.get("skipped"):
        skip = next((ln for ln in lines if ln.startswith("SKIPPED")), "")
        why = skip.split(": ", 1)[-1].removeprefix("needs a CUDA device ").strip("()") if skip else "all skipped"
        return _result("skipped", shown, f"{NEEDS_CUDA} ({_cut(why, 60)})" if ctx.dry else _cut(why), counts=counts)
    return _result("ok", shown, counts=counts)


# --------------------------------------------------------------------------- step 2: txbench list


def step_list(ctx: Ctx) -> dict:
    rc, out = ctx.txbench(["list", "--json"], "list")
    if rc != 0:
        return _result("error", [], first_error_line((ctx.logs / "list.log").read_text(errors="replace")))
    rows = json.loads(out)
    dev = "cpu" if ctx.dry else "cuda"
    mine = [r for r in rows if r["device"] == dev]
    if not mine:
        return _result("error", [], f"txbench list has no {dev} rows")
    lines = [] if not ctx.dry else [f"cuda rows: {NEEDS_CUDA}; the rehearsal shows the cpu rows"]
    precisions = list(dict.fromkeys(r["precision"] for r in mine))
    for prec in precisions:
        rs = [r for r in mine if r["precision"] == prec]
        ok = [r["attention"] for r in rs if r["available"]]
        lines.append(f"{dev} {prec:5s} runs {len(ok)}/{len(rs)}: {', '.join(ok) or 'nothing'}")
    nothing, reasons = [], {}
    for prec in precisions:
        rs = [r for r in mine if r["precision"] == prec and not r["available"]]
        if rs and len(rs) == sum(r["precision"] == prec for r in mine):  # nothing runs: one reason says why
            nothing.append(f"  {prec}: nothing runs: {_cut(rs[0]['reason'], 80)}")
            continue
        for r in rs:  # one line per attention and reason, whatever the dtype it names
            key = (r["attention"], re.sub(r"torch\.\w+", "", r["reason"]))
            reasons.setdefault(key, (_cut(_short_reason(r["reason"]), 70), []))[1].append(prec)
    shown = nothing + [f"  not {att} ({','.join(precs)}): {why}" for (att, _), (why, precs) in reasons.items()]
    lines += shown[:6] + ([f"  ... {len(shown) - 6} more reasons in summary.json"] if len(shown) > 6 else [])
    missing = [a for a in FORCED if not any(r["available"] for r in mine if r["precision"] == "bf16"
                                            and r["attention"] == a)]
    status, reason = "ok", ""
    if not ctx.dry and missing:
        status, reason = "warn", f"bf16 cannot run {', '.join(missing)} on this GPU (reasons above)"
    doctor = _doctor(ctx, dev)
    lines += doctor["lines"]
    if doctor["reason"] and status == "ok":
        status, reason = "warn", doctor["reason"]
    return _result(status, lines, reason, rows=rows, doctor=doctor["checks"])


def _doctor(ctx: Ctx, dev: str) -> dict:
    """``txbench doctor`` on the device: persistence, clocks, throttling, other processes, ECC (via NVML)."""
    rc, out = ctx.txbench(["doctor", "--format", "json", "--threads", "1", "--device", dev], "doctor")
    try:
        body = json.loads(out)
    except (TypeError, ValueError):
        return {"lines": ["doctor: no JSON answer (doctor.log)"], "reason": "txbench doctor failed", "checks": []}
    shown = [c for c in body["checks"] if c["status"] != "ok" or c["name"].lower().startswith(("gpu", "sm", "nvml",
                                                                                           "persistence", "ecc"))]
    lines = [f"doctor {c['status']:4s} {c['name']}: {_cut(c['value'], 60)}" for c in shown[:6]]
    bad = [c["name"] for c in body["checks"] if c["status"] == "fail"]
    return {"lines": lines, "checks": body["checks"],
            "reason": f"txbench doctor: {', '.join(bad)} failed (the check's numbers may be contaminated)" if bad
            else ""}


# --------------------------------------------------------------------------- step 3: the attention sweep


def _cell(r: dict) -> str:
    if r["status"] == "ok":
        return f"ok {_ms(r['step_ms_median'])}"
    return {"unsupported": "unsup"}.get(r["status"], r["status"])


def kernel_names(points: list[dict], ops: list[dict], device: str) -> dict:
    """Per attention implementation: the recorded kernel rows and what txbench's check said.

    ``kernels`` are the rows the device itself ran (CUDA kernels on a GPU; on a CPU rehearsal, where
    there are no kernels, the CPU ops), ``attention_ops`` the CPU ops of the attention region on a GPU
    (the SDPA call that names the math backend is a CPU op). Rows are ``[category, region, fwd_name,
    name]`` as in tests/data/gpu_kernel_names.txt; ``fwd_name`` is ``-`` (ops.parquet does not keep it).
    """
    out: dict = {}
    by_point = {}
    for p in points:
        impl = p["attention"] if p.get("arch") != "hf" else f"hf:{p['attention']}"
        by_point[p["point_id"]] = impl
        entry = out.setdefault(impl, {"points": [], "kernels": {}, "attention_ops": {}})
        entry["points"].append({"seq_len": p["seq_len"], "status": p["status"],
                                "attention_kernel": p.get("attention_kernel"),
                                "attention_verified": p.get("attention_verified")})
    for o in ops:
        impl = by_point.get(o["point_id"])
        if impl is None or o["name"] == "[python overhead]":
            continue
        row = (o["category"], o["region"] or "-", "-", o["name"])
        if o["device"] == device:
            out[impl]["kernels"][row] = None
        elif o["region"] == "attention":
            out[impl]["attention_ops"][row] = None
    for entry in out.values():
        entry["kernels"] = sorted(map(list, entry["kernels"]), key=lambda r: (r[0], r[3]))
        entry["attention_ops"] = sorted(map(list, entry["attention_ops"]), key=lambda r: (r[0], r[3]))
    return out


def step_sweep(ctx: Ctx) -> dict:
    hf_ok = ctx.env.get("transformers", False)
    main = ctx.run_suite("sweep", timeout=ctx.left() - (40 if hf_ok else 0))  # the rest is the HF run's
    hf = ctx.run_suite("hf") if hf_ok else None
    pts = _records(main["points"])
    lines = []
    status = "ok"
    reasons = []
    if main["error"]:
        reasons.append(f"sweep: {main['error']}")
        status = "error" if not pts else "fail"
    seqs = sorted({p["seq_len"] for p in pts})
    lines.append(f"{'attention':15s}" + "".join(f"{'T=' + str(t):>13s}" for t in seqs) + f"{'verified':>11s}")
    problems, unverified = [], []
    for att in SWEEP_ATTENTIONS:
        rs = {p["seq_len"]: p for p in pts if p["attention"] == att}
        okp = [p for p in rs.values() if p["status"] == "ok"]
        ver = "n/a" if att not in FORCED else f"{sum(p['attention_verified'] is True for p in okp)}/{len(okp)}"
        lines.append(f"{att:15s}" + "".join(f"{_cell(rs[t]) if t in rs else 'missing':>13s}" for t in seqs)
                     + f"{ver:>11s}")
        for p in rs.values():
            if p["status"] != "ok":
                problems.append(f"  {att} T={p['seq_len']} {p['status']}: {_cut(_short_reason(p['error']), 70)}")
            elif att in FORCED and p["attention_verified"] is not True:
                unverified.append(f"{att} T={p['seq_len']} ran {p['attention_kernel']}")
    lines.append("cells: status and median step ms; verified: ok points whose requested kernel ran")
    lines += problems[:5] + ([f"  ... {len(problems) - 5} more in summary.json"] if len(problems) > 5 else [])
    errors = [p for p in pts if p["status"] == "error"]
    if errors:
        status = "fail"
        reasons.append(f"{len(errors)} point(s) error: {_cut(errors[0]['error'], 60)}")
    if unverified:
        status = "fail"
        reasons.append("not verified: " + "; ".join(unverified[:3]))
    if any(p["status"] == "timeout" for p in pts) and status == "ok":
        status, reasons = "warn", reasons + ["a point timed out"]
    hf_pts = _records(hf["points"]) if hf else []
    if hf is None:
        lines.append("hf llama: skipped: transformers does not import")
    else:
        if hf["error"]:
            reasons.append(f"hf: {hf['error']}")
            status = _worst([status, "fail"])
        for p in hf_pts:
            extra = (f"{_ms(p['step_ms_median'])} ms, kernel {p['attention_kernel']}, verified "
                     f"{p['attention_verified']}" if p["status"] == "ok" else _cut(_short_reason(p["error"]), 70))
            lines.append(f"hf llama T={p['seq_len']} {p['attention']}: {p['status']} {extra}")
            if p["status"] == "error":
                status = "fail"
                reasons.append(f"hf {p['attention']} error")
            if p["status"] == "ok" and p["attention"] in FORCED and p["attention_verified"] is not True:
                status = "fail"
                reasons.append(f"hf {p['attention']} not verified")
    # kernel names per implementation, for the recorded fixture
    ops = _records(main["ops"]) + (_records(hf["ops"]) if hf else [])
    kn = kernel_names(pts + hf_pts, ops, ctx.device)
    doc = {"format": KERNELS_FORMAT, "columns": list(KERNEL_COLUMNS), "device": ctx.device,
           "device_name": ctx.env.get("device_name"), "torch": ctx.env.get("torch"), "recorded_at": _now(),
           "source": "benchmarks/gpu_check.py (suites benchmarks/gpu_check/sweep.yaml, hf.yaml)",
           "implementations": kn}
    (ctx.out / KERNELS_JSON).write_text(json.dumps(doc, indent=1))
    n_rows = sum(len(e["kernels"]) for e in kn.values())
    lines.append(f"{KERNELS_JSON}: {n_rows} {ctx.device} rows over {len(kn)} implementations")
    run_dirs = [str(r["run_dir"]) for r in (main, hf) if r and r["run_dir"]]
    return _result(status, lines, "; ".join(reasons), points=pts, hf_points=hf_pts, run_dirs=run_dirs)


# --------------------------------------------------------------------------- step 4: timing agreement


def step_timing(ctx: Ctx) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    import timing_agreement as ta

    from txbench import ModelConfig, Point

    dev = ctx.device
    triton_ok = dev == "cuda" and ctx.env.get("triton", False)
    if dev == "cuda":
        points, max_s = ta._points(dev)[:2], 2.0
    else:
        tiny = ModelConfig(d_model=64, n_layers=1, n_heads=2, vocab_size=256, max_seq_len=256)
        points, max_s = [Point(device="cpu", seq_len=64, batch_size=2, attention="sdpa_flash", model=tiny)], 0.5
    rows, lines = [], []
    for p in points:
        rows.append(ta.compare_point(p, ta.agreement_config(max_s), rounds=2 if dev == "cuda" else 1,
                                     min_run_time=max_s / 2, do_bench=triton_ok))
        r = rows[-1]
        lines.append(f"{_cut(p.label(), 44):44s} txbench {_ms(r['txbench_ms'])} ms  Timer {_ms(r['timer_ms'])} "
                     f"(x{r['ratio']:.3f})" + (f"  do_bench {_ms(r['do_bench_ms'])} (x{r['ratio_do_bench']:.3f})"
                                               if "do_bench_ms" in r else ""))
    if dev != "cuda":
        lines.append(f"triton do_bench: {NEEDS_CUDA}")
    elif not triton_ok:
        lines.append("triton do_bench: skipped: triton does not import")
    worst = max(max(abs(r["ratio"] - 1), abs(r.get("ratio_do_bench", 1) - 1)) for r in rows)
    lines.append(f"worst |ratio - 1| = {_pct(worst)} (goal {_pct(TIMING_GOAL)}; threads {torch.get_num_threads()})")
    status, reason = "ok", ""
    if worst > TIMING_GOAL:
        status = "warn"
        reason = f"disagreement {_pct(worst)} above the {_pct(TIMING_GOAL)} goal" + (
            " (a shared CPU; the goal is for the GPU)" if ctx.dry else "")
    return _result(status, lines, reason, rows=rows, worst_rel_diff=worst)


# --------------------------------------------------------------------------- step 5a: MFU of a 350M GPT


def _first_point(res: dict) -> tuple[dict | None, dict | None]:
    """(the sweep's first record, None), or (None, the step's error result) when it recorded nothing."""
    pts = _records(res["points"])
    if not pts:
        return None, _result("error", [], res["error"] or "no record")
    return pts[0], None


def step_mfu(ctx: Ctx) -> dict:
    p, failed = _first_point(ctx.run_suite("mfu", profile=False))
    if failed:
        return failed
    size = f"{p['params'] / 1e6:.1f}M params, " if p.get("params") else ""
    lines = [f"{size}d={p['d_model']} L={p['n_layers']} H={p['n_heads']} T={p['seq_len']} B={p['batch_size']} "
             f"{p['precision']} {p['attention']}: {p['status']} {_cut(p['error'] or '', 60)}".rstrip()]
    if p["status"] != "ok":
        return _result("fail", lines, f"{p['status']}: {_cut(p['error'] or '', 80)}", point=p)
    lines.append(f"step {_ms(p['step_ms_median'])} ms (fwd {_ms(p['fwd_ms_median'])} / bwd {_ms(p['bwd_ms_median'])}"
                 f" / opt {_ms(p['opt_ms_median'])}), {p['tokens_per_s']:.0f} tok/s, {p['tflops_per_s']:.3g} TFLOP/s, "
                 f"peak {_gib(p['peak_mem_bytes'])}")
    mfu = p.get("mfu")
    peak = f"{p['peak_tflops']:.4g}" if p.get("peak_tflops") else "-"
    lines.append(f"MFU {_pct(mfu)} against {peak} TFLOP/s ({_cut(p['peak_source'], 60)}); AdamW "
                 f"{p['optimizer_impl']}")
    seen, nvml = interference_line(p, ctx.dry)
    lines.append(seen)
    if ctx.dry:
        lines.append("goal >= 45% (llm-foundry 35-46% on H100): applies on the GPU; a CPU measures its own GEMM peak")
        return _result("ok", lines, point=p)
    lines.append(f"goal >= {_pct(MFU_GOAL)}; anchors: llm-foundry 35-46% MFU on H100")
    if p.get("interference") == "contended":
        return _result("warn", lines, f"contended: {_cut(p.get('interference_reason') or '', 80)}", point=p)
    if not nvml:
        return _result("warn", lines, "no NVML readings in the blocks: install nvidia-ml-py (device-wheels.sh "
                       "nvidia-ml-py)", point=p)
    if mfu is None:
        return _result("warn", lines, f"no MFU: {p['peak_source']}", point=p)
    if mfu < MFU_GOAL:
        return _result("warn", lines, f"MFU {_pct(mfu)} below the {_pct(MFU_GOAL)} goal", point=p)
    return _result("ok", lines, point=p)


def interference_line(p: dict, dry: bool) -> tuple[str, bool]:
    """The point's interference in one line, and whether its blocks carry NVML readings (SM clock, reasons)."""
    blocks = json.loads(p.get("block_interference") or "[]")
    gpu = [b for b in blocks if b.get("gpu_clock_ratio_min") is not None]
    head = (f"interference {p.get('interference')}: {len(blocks)} blocks, {p.get('blocks_dropped')} dropped, "
            f"others held up to {p.get('other_cores_max') or 0:.2f} cores")
    if gpu:
        ratio = min(b["gpu_clock_ratio_min"] for b in gpu)
        reasons = sorted({r for b in gpu for r in (b.get("gpu_throttle_reasons") or "").split(",") if r})
        procs = max(b.get("gpu_other_processes") or 0 for b in gpu)
        head += (f"; SM clock >= {_pct(ratio)} of max, throttle {', '.join(reasons) or 'none'}, "
                 f"{procs} other GPU process(es)")
    elif not dry:
        head += "; no NVML readings"
    return head, bool(gpu)


# --------------------------------------------------------------------------- step 5b: SDPA flash TFLOP/s


def _flash_tflops(B: int, H: int, T: int, hd: int, causal: bool, device: str, iters: int) -> dict:
    """Forward+backward TFLOP/s of SDPA with the flash backend forced, FlashAttention-2's FLOP convention:
    forward 4*B*H*T^2*hd (halved when causal), backward 2.5x forward."""
    import statistics

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, T, hd, device=device, dtype=dt, generator=g).requires_grad_() for _ in range(3))
    do = torch.randn(B, H, T, hd, device=device, dtype=dt, generator=g)
    cuda = device == "cuda"

    def once():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out.backward(do)
        q.grad = k.grad = v.grad = None

    for _ in range(3):
        once()
    times = []
    for _ in range(iters):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            once()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            once()
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    flops = 4 * B * H * T * T * hd * (0.5 if causal else 1.0) * 3.5
    return {"B": B, "H": H, "T": T, "head_dim": hd, "causal": causal, "ms": ms, "tflops": flops / ms / 1e9}


def step_flash(ctx: Ctx) -> dict:
    if ctx.dry:
        cases = [(1, 2, 256, 64, False), (1, 2, 256, 64, True)]
        iters = 3
    else:  # B*T = 16k tokens and hidden 2048, as in the FlashAttention-2 paper's benchmarks
        cases = [(4, 16, 4096, 128, False), (4, 16, 4096, 128, True), (4, 32, 4096, 64, False)]
        iters = 20
    rows = [_flash_tflops(*c, device=ctx.device, iters=iters) for c in cases]
    lines = [f"T={r['T']} B={r['B']} H={r['H']} hd={r['head_dim']} {'causal' if r['causal'] else 'no mask':7s}: "
             f"{_ms(r['ms'])} ms fwd+bwd, {r['tflops']:.3g} TFLOP/s"
             + ("" if ctx.dry else f" ({r['tflops'] / FA2_H100_TFLOPS:.0%} of FA2's {FA2_H100_TFLOPS:.0f})")
             for r in rows]
    ref = rows[0]
    if ctx.dry:
        lines.append(f"FA2 reference (~{FA2_H100_TFLOPS:.0f} TFLOP/s, H100, hd 128): {NEEDS_CUDA} for the comparison")
        return _result("ok", lines, rows=rows)
    lines.append(f"reference: FlashAttention-2 paper (Dao 2023), ~{FA2_H100_TFLOPS:.0f} TFLOP/s fwd+bwd on H100, "
                 "hd 128; goal >= 90% (SDPA's flash is FA2's kernel)")
    if ref["tflops"] < 0.9 * FA2_H100_TFLOPS:
        return _result("warn", lines, f"{ref['tflops']:.0f} TFLOP/s is below 90% of FA2's published figure",
                       rows=rows)
    return _result("ok", lines, rows=rows)


# --------------------------------------------------------------------------- step 6: OOM, then ok


def step_oom(ctx: Ctx) -> dict:
    res = ctx.run_suite("oom", profile=False, env_extra={"TXBENCH_FAULT": DRY_OOM_FAULT} if ctx.dry else None)
    pts = _records(res["points"])
    if len(pts) < 2:
        return _result("error", [f"{len(pts)} of 2 points recorded"], res["error"] or "the sweep stopped early",
                       points=pts)
    big, small = pts[0], pts[1]
    lines = [f"T={big['seq_len']} B={big['batch_size']}: {big['status']}, peak seen {_gib(big['peak_mem_bytes'])}: "
             f"{_cut(big['error'] or '', 50)}",
             f"T={small['seq_len']} B={small['batch_size']} (next point): {small['status']}"
             + (f", {_ms(small['step_ms_median'])} ms" if small["status"] == "ok" else
                f": {_cut(small['error'] or '', 60)}")]
    if ctx.dry:
        lines.append("rehearsal: an injected allocator OOM (TXBENCH_FAULT), not a real one; GPU peak: " + NEEDS_CUDA)
    problems = []
    if big["status"] != "oom":
        problems.append(f"the big point is {big['status']}, not oom")
    elif not ctx.dry and not big["peak_mem_bytes"]:
        problems.append("no peak memory recorded with the oom")
    if small["status"] != "ok":
        problems.append(f"the next point is {small['status']}, not ok")
    if not ctx.dry and big["status"] == "oom":  # the allocator snapshot of the failing step (docs/memory.md)
        snap = big.get("memory_snapshot")
        path = Path(res["run_dir"]) / snap if snap and res["run_dir"] else None
        if path is not None and path.exists():
            lines.append(f"memory snapshot: {snap}, {path.stat().st_size / 2**20:.1f} MiB")
        else:
            problems.append("no memory snapshot kept with the oom")
    return _result("fail" if problems else "ok", lines, "; ".join(problems), points=pts)


# --------------------------------------------------------------------------- step 6b: DDP and FSDP2 on NCCL


def step_ddp(ctx: Ctx) -> dict:
    extra = [] if ctx.dry else ["--devices", "all"]  # the device pool too: one slot per GPU
    if not ctx.dry and _cuda_count() >= 2:
        extra += ["--set", "sweep.world_size=[1,2]"]
    res = ctx.run_suite("ddp", extra=extra)
    pts = _records(res["points"])
    if not pts:
        return _result("error", [], res["error"] or "no point recorded")
    ops = _records(res["ops"])
    ref = next((p for p in pts if p["parallel"] == "none" and p["status"] == "ok"), None)
    lines, problems = [], []
    for p in pts:
        name = f"{p['parallel']} W={p['world_size']}"
        if p["status"] != "ok":
            lines.append(f"{name}: {p['status']}: {_cut(p['error'] or '', 70)}")
            problems.append(f"{name} {p['status']}")
            continue
        comm = [o for o in ops if o["point_id"] == p["point_id"] and o["category"] == "communication"]
        kernels = sorted({o["name"] for o in comm if o["device"] == "cuda"})
        lines.append(f"{name}: {_ms(p['step_ms_median'])} ms, {p.get('backend')}, first loss {p['first_loss']:.5f}, "
                     f"comm {_pct(p.get('comm_share'))} of the step ({_pct(p.get('comm_exposed_share'))} exposed), "
                     f"{len(kernels)} communication kernels" + (f" e.g. {_cut(kernels[0], 40)}" if kernels else ""))
        if p["parallel"] != "none":
            if p.get("backend") != ("nccl" if ctx.device == "cuda" else "gloo"):
                problems.append(f"{name}: backend {p.get('backend')}")
            if p["world_size"] > 1 and not comm:
                problems.append(f"{name}: no communication rows")
            if ref is not None and p["world_size"] == 1 and abs(p["first_loss"] - ref["first_loss"]) > 1e-3 * abs(
                    ref["first_loss"]):
                problems.append(f"{name}: first loss {p['first_loss']:.6g} vs one process {ref['first_loss']:.6g}")
    return _result("fail" if problems else "ok", lines, "; ".join(problems), points=pts)


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


# --------------------------------------------------------------------------- step 7: the profiler pass


def step_profile(ctx: Ctx) -> dict:
    res = ctx.run_suite("profile", trace=True)
    p, failed = _first_point(res)
    if failed:
        return failed
    if p["status"] != "ok":
        return _result("fail", [f"{p['status']}: {_cut(p['error'] or '', 80)}"], f"point {p['status']}", point=p)
    ops = _records(res["ops"])
    dev = ctx.device
    lines = [f"{_cut(p['attention'] + ' T=' + str(p['seq_len']), 30)}: step {_ms(p['step_ms_median'])} ms, "
             f"profiled {_ms(p['profiled_step_ms'])} ms, kernel {p['attention_kernel']} "
             f"(verified {p['attention_verified']})"]
    if dev == "cuda":
        launches = p["kernel_launches_per_step"] or 0
        lines.append(f"GPU busy {_ms(p['gpu_busy_ms_per_step'])} ms / idle {_ms(p['gpu_idle_ms_per_step'])} ms per "
                     f"step (idle {_pct(p['gpu_idle_share'])}), {launches:.0f} kernel launches/step")
    else:
        lines.append(f"GPU busy/idle and kernel launches: {NEEDS_CUDA}")
    mine = [o for o in ops if o["device"] == dev and o["name"] != "[python overhead]"]
    by_cat: dict = {}
    for o in mine:
        by_cat[o["category"]] = by_cat.get(o["category"], 0.0) + o["self_ms"]
    total = sum(by_cat.values()) or 1.0
    lines.append(f"{len({o['name'] for o in mine})} distinct {'kernels' if dev == 'cuda' else 'ops'}; "
                 f"{dev} time by category: " + ", ".join(
        f"{c} {100 * v / total:.0f}%" for c, v in sorted(by_cat.items(), key=lambda kv: -kv[1])[:6]))
    top = sorted(mine, key=lambda o: -o["self_ms"])[:5]
    lines += [f"  {_ms(o['self_ms']):>7s} ms {o['category']:12s} {_cut(o['name'], WIDTH - 27)}" for o in top]
    sweep_file = ctx.work / "steps" / "sweep.json"
    if dev == "cuda" and sweep_file.exists():
        shares = [s["gpu_idle_share"] for s in json.loads(sweep_file.read_text())["data"].get("points", [])
                  if s.get("gpu_idle_share") is not None]
        if shares:
            lines.append(f"sweep: GPU idle share {_pct(min(shares))} .. {_pct(max(shares))} over {len(shares)} points")
    trace = res["run_dir"] / p["trace_path"] if p.get("trace_path") else None
    problems = []
    if trace is not None and trace.exists():
        size = trace.stat().st_size
        if size <= MAX_FILE_BYTES:
            shutil.copyfile(trace, ctx.out / TRACE)
            lines.append(f"trace: {TRACE} ({size / 1e6:.1f} MB; open in https://ui.perfetto.dev)")
        else:  # too big to come back on its own; the archive keeps it if it fits there
            lines.append(f"trace: {size / 1e6:.0f} MB, over 16 MiB: left in the run directory")
    else:
        problems.append("no trace written")
    if not mine:
        problems.append(f"no {dev} rows in ops.parquet")
    if dev == "cuda" and p["gpu_busy_ms_per_step"] is None:
        problems.append("no GPU busy time")
    return _result("fail" if problems else "ok", lines, "; ".join(problems), point=p,
                   by_category_ms=by_cat, run_dir=str(res["run_dir"]))


# --------------------------------------------------------------------------- step 8: report and files


def step_report(ctx: Ctx) -> dict:
    sweep = ctx.work / "steps" / "sweep.json"
    dirs = json.loads(sweep.read_text())["data"].get("run_dirs", []) if sweep.exists() else []
    if not dirs:
        return _result("error", [], "no sweep run to report")
    run_dir = Path(dirs[0])
    for name in ("points.parquet", "ops.parquet"):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, ctx.out / name)
    rc, _ = ctx.txbench(["report", str(run_dir), "-o", str(ctx.out / "report.html")], "report")
    if rc != 0:
        return _result("error", [], "txbench report: " + first_error_line(
            (ctx.logs / "report.log").read_text(errors="replace")))
    size = (ctx.out / "report.html").stat().st_size
    return _result("ok", [f"report.html ({size / 1e6:.1f} MB) of {run_dir.relative_to(ctx.out)}; "
                          "points.parquet, ops.parquet copied"])


STEP_FNS = {"pytest": step_pytest, "list": step_list, "sweep": step_sweep, "timing": step_timing,
            "mfu": step_mfu, "flash": step_flash, "oom": step_oom, "ddp": step_ddp, "profile": step_profile,
            "report": step_report}


# --------------------------------------------------------------------------- the parent: budgets, summary, files


def _run_step(key: str, out: Path, dry: bool, timeout: float) -> dict:
    """Run one step in a child process (its own session) and read its JSON answer."""
    work = out / "work"
    answer = work / "steps" / f"{key}.json"
    answer.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--step", key, "--step-timeout", f"{timeout:.0f}"]
    cmd += ["--dry-run"] if dry else []
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    rc, _ = run_cmd(cmd, work / "logs" / f"step_{key}.log", timeout + 10)
    wall = time.monotonic() - t0
    if answer.exists():
        res = json.loads(answer.read_text())
    else:
        log = (work / "logs" / f"step_{key}.log").read_text(errors="replace")
        why = f"timed out after {timeout:.0f} s (its budget)" if rc is None else first_error_line(log)
        res = _result("error", [], why)
    res["wall_s"] = round(wall, 1)
    res["cpu_s"] = round(_children_cpu_s() - cpu0, 1)  # CPU time of the step's processes (all cores)
    return res


def _children_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _child(key: str, out: Path, dry: bool, timeout: float) -> int:
    ctx = Ctx(out, dry, time.monotonic() + timeout)
    try:
        res = STEP_FNS[key](ctx)
    except Exception as exc:  # reported as the step's error; the parent goes on with the next step
        import traceback

        traceback.print_exc()
        res = _result("error", [], first_error_line(f"{type(exc).__name__}: {exc}"))
    path = ctx.work / "steps" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    return 0


def _archive(out: Path) -> list[str]:
    """Tar everything under work/ into one file of at most 16 MiB (dropping memory snapshots, then traces, then
    logs, if needed)."""
    notes = []
    work = out / "work"
    files = sorted(p for p in work.rglob("*") if p.is_file())
    drop_order = [lambda p: p.suffix == ".pickle" and "snapshots" in p.parts,
                  lambda p: p.suffix == ".gz" and "traces" in p.parts, lambda p: p.suffix == ".log",
                  lambda p: p.name == "ops.parquet"]
    for rule in [None] + drop_order:
        if rule is not None:
            dropped = [p for p in files if rule(p)]
            files = [p for p in files if not rule(p)]
            if dropped:
                notes.append(f"left out of {ARCHIVE} to stay under 16 MiB: {len(dropped)} file(s) like "
                             f"{dropped[0].name}")
        with tarfile.open(out / ARCHIVE, "w:gz") as tar:
            for p in files:
                tar.add(p, arcname=str(p.relative_to(out)))
        if (out / ARCHIVE).stat().st_size <= MAX_FILE_BYTES:
            break
    shutil.rmtree(work)
    return notes


def render_summary(header: list[str], results: dict, files: list[str], notes: list[str], wall: float) -> str:
    lines = ["=" * WIDTH, *header, "=" * WIDTH]
    for key, title, *_ in STEPS:
        r = results.get(key)
        if r is None:
            continue
        head = f"[{r['status'].upper():7s}] {title}  ({r.get('wall_s', 0):.0f} s)"
        if r["reason"]:
            head += f"  {r['reason']}" if r["reason"].startswith("skipped") else f"  {r['status']}: {r['reason']}"
        lines.append(head if len(head) <= 2 * WIDTH else head[: 2 * WIDTH - 3] + "...")
        lines += [f"    {ln}" for ln in r["lines"]]
    counts = {s: sum(r["status"] == s for r in results.values()) for s in STATUSES}
    lines.append("-" * WIDTH)
    lines.append("steps: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; wall {wall:.0f} s")
    lines.append(f"files ({len(files)}): " + ", ".join(files))
    lines += notes
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (on the device machine: $OUT)")
    ap.add_argument("--dry-run", action="store_true", help="rehearse every step on CPU at tiny sizes")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="the whole check's time limit (default: 450 on GPU, the sum of the step budgets dry)")
    ap.add_argument("--only", help="comma-separated step keys to run (default: all)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--step-timeout", type=float, default=60, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.dry_run:
        os.environ["TXBENCH_GPU_CHECK_DRY"] = "1"
    if args.step:
        return _child(args.step, out, args.dry_run, args.step_timeout)
    t0 = time.monotonic()
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty", file=sys.stderr)
        return 2
    work = out / "work"
    (work / "steps").mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    budgets = {k: (d if dry else g) for k, _, g, d in STEPS}
    keys = [k for k, *_ in STEPS if not args.only or k in args.only.split(",")]
    deadline = t0 + (args.budget_s or (sum(budgets[k] for k in keys) if dry else 450.0))
    env = probe_env(work)
    mode = "dry run on CPU (tiny sizes; CUDA-only parts skipped)" if dry else "GPU"
    gpu = f" (sm {env['capability']}, {_gib(env['gpu_mem_bytes'])})" if env.get("capability") else ""
    packages = ("triton", "flash_attn", "transformers", "plotly", "pydantic")
    header = [f"txbench GPU check  {mode}  {_now()}",
              f"python {env.get('python')}  torch {env.get('torch')}  CUDA {env.get('cuda_version')}  "
              f"device {env.get('device_name') or 'cpu'}{gpu}",
              "packages: " + ", ".join(f"{m} {'yes' if env.get(m) else 'no'}" for m in packages)]
    results: dict = {}
    rc = 0
    if not dry and not env.get("cuda_available"):
        for k in keys:
            results[k] = _result("skipped", [], f"{NEEDS_CUDA} (torch.cuda.is_available() is False; "
                                 "--dry-run rehearses on CPU)")
        rc = 2
    else:
        for i, k in enumerate(keys):
            later = sum(budgets[j] for j in keys[i + 1:])
            left = deadline - time.monotonic()
            timeout = min(max(left - later, budgets[k]), left - 5)
            if timeout < 5:
                results[k] = _result("skipped", [], "skipped: the check's time budget is spent")
                continue
            print(f"[gpu_check] step {k} (budget {timeout:.0f} s)", file=sys.stderr, flush=True)
            results[k] = _run_step(k, out, dry, timeout)
        if any(r["status"] in ("fail", "error") for r in results.values()):
            rc = 1
    notes = _archive(out)
    files = sorted(p.name for p in out.iterdir()) + [SUMMARY_TXT, SUMMARY_JSON]
    files = sorted(set(files))
    if len(files) > MAX_FILES:
        notes.append(f"warning: {len(files)} files, more than the {MAX_FILES} that come back")
    big = [f for f in files if (out / f).exists() and (out / f).stat().st_size > MAX_FILE_BYTES]
    if big:
        notes.append(f"warning: over 16 MiB: {', '.join(big)}")
    wall = time.monotonic() - t0
    text = render_summary(header, results, files, notes, wall)
    (out / SUMMARY_JSON).write_text(json.dumps({"env": env, "dry_run": dry, "wall_s": wall, "exit_code": rc,
                                                "steps": results, "files": files, "notes": notes},
                                               indent=1, default=str))
    (out / SUMMARY_TXT).write_text(text)
    print(text, end="")
    return rc


if __name__ == "__main__":
    sys.exit(main())
