"""How long the HTML report takes to render for a large run, and how big the file is.

Synthesises a run of ~2,000 points (seq_len x batch x attention x precision,
with OOM, unsupported and error points, per-step samples and ~20 profiler ops
per point), writes it with ``txbench.store`` exactly as a sweep would, renders
it with ``txbench.report.html.write_report`` and prints the figures, then times
``txbench.analysis.findings.find`` on its own. Goals (medians): the whole
report in at most 3 s, ``find`` in at most 1 s, the file under 8 MB with
plotly.js embedded.

``--save-output DIR`` writes the findings (JSON) and the report's text there;
``--check-output DIR`` exits with status 1 unless both are identical (same
sentences, same order, same bytes of HTML) to what was saved: run it before
and after a change that should only make the report faster.

``--against TREE`` measures this tree and another copy of txbench (a second
worktree at the parent commit, say) side by side on one synthetic run: each of
``--repeat`` rounds runs one fresh process per tree (``PYTHONPATH=<tree>``), the
two in alternating order, and each process times its first render (a cold
process, as ``txbench report`` runs), a second render, ``find`` on freshly
loaded points, and ``find`` again on the same points. It prints the medians of
both trees and their ratio, and exits with status 1 unless both trees wrote
the same findings and the same report text.

    python benchmarks/report_render.py [--points-per-axis 10] [--repeat 3] [--keep DIR]
        [--save-output DIR | --check-output DIR | --against TREE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from txbench.analysis.findings import find, load_run
from txbench.config import ModelConfig, Point
from txbench.record import Record
from txbench.report.html import write_report
from txbench.store import OPS_FILE, POINTS_FILE, write_points, write_table

ATTENTIONS = ("naive", "sdpa_math", "sdpa_flash", "sdpa_efficient", "flex")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
SEQ_LENS = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192, 16384)
BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
GOAL_REPORT_S, GOAL_FIND_S, GOAL_SIZE_MB = 3.0, 1.0, 8.0
PEAK_TFLOPS = {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0}
MEM_LIMIT_BYTES = 80 * 2**30
# (name, category, phase, region, share of the step before attention scaling)
OPS = [
    ("aten::mm", "gemm", "forward", "mlp", 0.10), ("aten::mm", "gemm", "backward", "mlp", 0.18),
    ("aten::addmm", "gemm", "forward", "attention", 0.05), ("aten::mm", "gemm", "backward", "attention", 0.08),
    ("aten::_scaled_dot_product_flash_attention", "attention", "forward", "attention", 0.05),
    ("aten::_scaled_dot_product_flash_attention_backward", "attention", "backward", "attention", 0.09),
    ("aten::softmax", "attention", "forward", "attention", 0.02),
    ("aten::bmm", "attention", "forward", "attention", 0.03),
    ("aten::native_layer_norm", "norm", "forward", "norm", 0.02),
    ("aten::native_layer_norm_backward", "norm", "backward", "norm", 0.03),
    ("aten::gelu", "activation", "forward", "mlp", 0.015),
    ("aten::gelu_backward", "activation", "backward", "mlp", 0.02),
    ("aten::embedding_dense_backward", "embedding", "backward", "embedding", 0.01),
    ("aten::_log_softmax", "lm_head_loss", "forward", "lm_head_loss", 0.04),
    ("aten::_log_softmax_backward_data", "lm_head_loss", "backward", "lm_head_loss", 0.05),
    ("aten::_fused_adamw_", "optimizer", "optimizer", None, 0.06), ("aten::add", "elementwise", "forward", None, 0.02),
    ("aten::mul", "elementwise", "backward", None, 0.02), ("aten::copy_", "memcpy", "forward", None, 0.015),
    ("[python overhead]", "other", "other", None, 0.04),
]


def _point_rows(rng: np.random.Generator, n_axis: int) -> tuple[list[dict], list[dict]]:
    records, ops = [], []
    model = ModelConfig(d_model=1024, n_layers=12, n_heads=16, vocab_size=32768, max_seq_len=16384)
    for att in ATTENTIONS:
        for prec in PRECISIONS:
            for t in SEQ_LENS[:n_axis]:
                for b in BATCHES[:n_axis]:
                    p = Point(device="cuda", seq_len=t, batch_size=b, precision=prec, attention=att, model=model)
                    records.append(_record(rng, p, len(records)))
                    if records[-1]["status"] == "ok":
                        ops.extend(_ops(rng, p, records[-1]))
    return records, ops


def _record(rng: np.random.Generator, p: Point, i: int) -> dict:
    t, b, att, prec = p.seq_len, p.batch_size, p.attention, p.precision
    if att == "flex" and prec == "fp32":
        return Record.for_point(p, "unsupported", "flex attention needs bf16/fp16 here").to_dict()
    quadratic = att in ("naive", "sdpa_math")
    mem = 2.4e9 + b * t * (60_000 + (t * 64 if quadratic else 0)) * (2 if prec in ("bf16", "fp16") else 4)
    if mem > MEM_LIMIT_BYTES:
        return Record.for_point(p, "oom", f"CUDA out of memory. Tried to allocate {mem / 2**30:.1f} GiB").to_dict()
    if i % 397 == 13:
        return Record.for_point(
            p, "error", "RuntimeError: CUDA error: an illegal memory access was encountered"
        ).to_dict()
    speed = {"fp32": 1.0, "tf32": 3.5, "bf16": 7.0, "fp16": 7.0}[prec]
    flops = 6 * 350e6 * b * t + 12 * 12 * b * t * t * 1024
    step_ms = flops / (PEAK_TFLOPS["fp32"] * 1e12 * 0.45 * speed) * 1e3 * (1.6 if quadratic else 1.0) + 4.0
    noise = 0.15 if i % 50 == 0 else 0.01
    samples = step_ms * (1 + noise * rng.standard_normal(30).clip(-3, 3))
    q1, q3 = np.quantile(samples, [0.25, 0.75])
    med = float(np.median(samples))
    fwd, bwd = 0.31 * med, 0.62 * med
    return Record.for_point(
        p, "ok", step_ms_median=med, step_ms_mean=float(samples.mean()), step_ms_std=float(samples.std()),
        step_ms_iqr=float(q3 - q1), step_ms_min=float(samples.min()), step_ms_max=float(samples.max()),
        step_ms_ci_low=med * (1 - 2 * noise / 5), step_ms_ci_high=med * (1 + 2 * noise / 5),
        step_ms_samples=samples.tolist(), fwd_ms_median=fwd, bwd_ms_median=bwd, opt_ms_median=med - fwd - bwd,
        noisy=bool((q3 - q1) / med > 0.10), n_steps=30, tokens_per_s=b * t / med * 1e3, samples_per_s=b / med * 1e3,
        flops_per_step=flops, tflops_per_s=flops / med / 1e9, peak_tflops=PEAK_TFLOPS[prec],
        mfu=flops / med / 1e9 / PEAK_TFLOPS[prec], peak_mem_bytes=int(mem),
        attention_kernel=att if att != "sdpa_efficient" or i % 7 else "sdpa_math",
        attention_verified=att != "sdpa_efficient" or bool(i % 7), profiled_step_ms=med * 1.08,
        trace_path=f"traces/{p.point_id}.json.gz" if i % 10 == 0 else None, device_name="NVIDIA H100 80GB HBM3",
        started_at="2025-01-01T00:00:00+00:00",
    ).to_dict()


def _ops(rng: np.random.Generator, p: Point, rec: dict) -> list[dict]:
    attn_boost = p.seq_len / 512 * (2.0 if p.attention in ("naive", "sdpa_math") else 0.5)
    weights = np.array([w * (attn_boost if cat == "attention" else 1.0) for _, cat, _, _, w in OPS])
    weights = weights * rng.uniform(0.8, 1.2, len(weights))
    self_ms = weights / weights.sum() * rec["profiled_step_ms"]
    return [{"point_id": p.point_id, "name": n, "phase": ph, "category": cat, "region": reg, "device": "cuda",
             "self_ms": float(s), "total_ms": float(s) * 1.05, "calls": float(p.model.n_layers * 2),
             "self_mem_bytes": None} for (n, cat, ph, reg, _), s in zip(OPS, self_ms)]


def synth_run(run_dir: Path, n_axis: int = 10, seed: int = 0) -> tuple[int, int]:
    """Write a synthetic run of ``5 * 4 * n_axis**2`` points into ``run_dir``; returns (points, op rows)."""
    rng = np.random.default_rng(seed)
    records, ops = _point_rows(rng, n_axis)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {"txbench_version": "0.1.0", "torch_version": "2.5.1+cu124", "cuda_version": "12.4", "python": "3.11.7",
           "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "torch_threads": 16}
    suite = {"name": "synthetic", "description": "seq_len x batch x attention x precision grid (report benchmark)",
             "device": "cuda", "sweep": {"seq_len": list(SEQ_LENS[:n_axis]), "batch_size": list(BATCHES[:n_axis]),
                                         "precision": list(PRECISIONS), "attention": list(ATTENTIONS)}}
    (run_dir / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    (run_dir / "env.json").write_text(json.dumps(env, indent=2))
    write_points(
        run_dir / POINTS_FILE, records, {"suite": "synthetic", "run_id": run_dir.name, "device": "cuda", "env": env}
    )
    write_table(run_dir / OPS_FILE, pa.Table.from_pylist(ops), {"suite": "synthetic"})
    traces = run_dir / "traces"
    traces.mkdir(exist_ok=True)
    for r in records:
        if r.get("trace_path"):
            (run_dir / r["trace_path"]).write_bytes(b"")
    return len(records), len(ops)


def _outputs(run_dir: Path, findings, report: Path) -> dict[str, str]:
    """The findings as JSON and the report's text, with the run's own path (it changes per run) written RUN_DIR."""
    text = report.read_text(encoding="utf-8")
    for form in {str(run_dir), str(run_dir).replace("&", "&amp;")}:
        text = text.replace(form, "RUN_DIR")
    return {"findings.json": json.dumps([dataclasses.asdict(f) for f in findings], indent=1, sort_keys=True),
            "report.html": text}


def _check(saved: Path, now: dict[str, str]) -> bool:
    """Compare ``now`` with the files saved in ``saved``; print where they first differ."""
    same = True
    for name, text in now.items():
        old = (saved / name).read_text(encoding="utf-8")
        if old == text:
            print(f"check: {name} identical to {saved / name}")
            continue
        same = False
        if name == "findings.json":
            a, b = json.loads(old), json.loads(text)
            print(f"check: findings differ ({len(a)} saved, {len(b)} now)")
            for i, (fa, fb) in enumerate(zip(a, b)):
                if fa != fb:
                    keys = [k for k in fa if fa.get(k) != fb.get(k)]
                    print(f"  first difference at finding {i} ({', '.join(keys)}):\n"
                          f"    saved: {fa['text']}\n    now:   {fb['text']}")
                    break
        else:
            i = next((k for k, (x, y) in enumerate(zip(old, text)) if x != y), min(len(old), len(text)))
            print(f"check: {name} differs from character {i}:\n  saved: {old[max(0, i - 80):i + 80]!r}\n"
                  f"  now:   {text[max(0, i - 80):i + 80]!r}")
    return same


#: What each process of ``--against`` times, in this order, with the labels printed.
_AB_TIMES = (("render_cold", "report, 1st render in a fresh process"), ("render", "report, 2nd render"),
             ("find_cold", "find(), freshly loaded points"), ("find", "find(), same points again"))


def _time_worker(run_dir: Path, out: Path) -> int:
    """One process of ``--against``: the times of :data:`_AB_TIMES` as JSON in ``out``, next to the outputs."""
    times = {}
    t0 = time.perf_counter()
    write_report([run_dir], out / "report.html")
    times["render_cold"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_report([run_dir], out / "report.html")
    times["render"] = time.perf_counter() - t0
    points, ops = load_run(run_dir)
    t0 = time.perf_counter()
    find(points, ops)
    times["find_cold"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    findings = find(points, ops)
    times["find"] = time.perf_counter() - t0
    for name, text in _outputs(run_dir, findings, out / "report.html").items():
        (out / name).write_text(text, encoding="utf-8")
    (out / "times.json").write_text(json.dumps(times))
    return 0


def _against(run_dir: Path, base: Path, other: Path, repeat: int) -> int:
    """This tree against ``other`` (see the module docstring); 1 when their outputs differ."""
    trees = {"other": other.resolve(), "this": Path(__file__).resolve().parents[1]}
    times: dict[str, list[dict]] = {k: [] for k in trees}
    same = True
    for i in range(repeat):
        for label in (("other", "this") if i % 2 == 0 else ("this", "other")):
            out = base / f"ab-{label}-{i}"
            out.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(trees[label])}
            cmd = [sys.executable, __file__, "--time-worker", str(run_dir.resolve()), str(out.resolve())]
            subprocess.run(cmd, env=env, cwd=trees[label], check=True)
            times[label].append(json.loads((out / "times.json").read_text()))
            print(f"round {i + 1} {label:<5} " + "  ".join(f"{k} {v:.2f} s" for k, v in times[label][-1].items()),
                  flush=True)
        for name in ("findings.json", "report.html"):
            a, b = ((base / f"ab-{t}-{i}" / name).read_text(encoding="utf-8") for t in ("other", "this"))
            if a != b:
                same = False
                print(f"round {i + 1}: {name} differs between the trees")
    print(f"\nmedians of {repeat} rounds; other = {trees['other']}, this = {trees['this']}")
    print(f"{'':<38} {'other s':>8} {'this s':>8} {'other/this':>11}")
    for key, label in _AB_TIMES:
        a, b = (statistics.median(t[key] for t in times[k]) for k in ("other", "this"))
        print(f"{label:<38} {a:>8.2f} {b:>8.2f} {a / b:>10.1f}x")
    print("outputs: findings and report text " + ("identical in every round" if same else "DIFFER"))
    return 0 if same else 1


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--time-worker":
        return _time_worker(Path(sys.argv[2]), Path(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points-per-axis", type=int, default=10,
                    help="seq_len and batch values (points = 20 x this squared)")
    ap.add_argument("--repeat", type=int, default=3, help="renders and find() calls to time (medians are reported)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run and the reports in this directory")
    out_args = ap.add_mutually_exclusive_group()
    out_args.add_argument("--save-output", type=Path, metavar="DIR",
                          help="write the findings and the report's text here")
    out_args.add_argument("--check-output", type=Path, metavar="DIR",
                          help="exit 1 unless the findings and the report's text equal those saved in DIR")
    out_args.add_argument("--against", type=Path, metavar="TREE",
                          help="time this tree and the txbench tree TREE side by side, one process each per round")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="txbench-report-bench-"))
    run_dir = base / "synthetic" / "20250101T000000Z-0000"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    n_points, n_ops = synth_run(run_dir, args.points_per_axis)
    if args.against:
        print(f"synthetic run: {n_points} points, {n_ops} op rows ({run_dir})")
        status = _against(run_dir, base, args.against, args.repeat)
        if args.keep is None:
            shutil.rmtree(base)
        return status
    rows = []
    for cdn in (False, True):
        out = base / ("report-cdn.html" if cdn else "report.html")
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            write_report([run_dir], out, cdn=cdn)
            times.append(time.perf_counter() - t0)
        rows.append((cdn, statistics.median(times), min(times), out.stat().st_size))
    # the findings rules run inside the render: time them alone to see whose seconds they are
    points, ops = load_run(run_dir)
    find_s = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        findings = find(points, ops)
        find_s.append(time.perf_counter() - t0)
    f = statistics.median(find_s)
    print(f"synthetic run: {n_points} points, {n_ops} op rows ({run_dir})")
    print(f"{'plotly.js':<10} {'render s (median)':>18} {'min s':>7} {'file MB':>8}")
    for cdn, med, mn, size in rows:
        print(f"{'cdn' if cdn else 'embedded':<10} {med:>18.2f} {mn:>7.2f} {size / 1e6:>8.2f}")
    # timed apart from the renders (it runs inside each): on a loaded machine the two medians come from
    # different minutes
    print(f"{'find()':<10} {f:>18.2f} {min(find_s):>7.2f}   ({len(findings)} findings, timed alone after the renders)")
    print(f"against the goals: report {rows[0][1]:.2f} s / {GOAL_REPORT_S:g} s = {rows[0][1] / GOAL_REPORT_S:.2f}, "
          f"find {f:.2f} s / {GOAL_FIND_S:g} s = {f / GOAL_FIND_S:.2f}, "
          f"file {rows[0][3] / 1e6:.2f} MB / {GOAL_SIZE_MB:g} MB = {rows[0][3] / 1e6 / GOAL_SIZE_MB:.2f} "
          "(at most 1 meets a goal)")
    status = 0
    if args.save_output or args.check_output:
        now = _outputs(run_dir, findings, base / "report.html")
        if args.save_output:
            args.save_output.mkdir(parents=True, exist_ok=True)
            for name, text in now.items():
                (args.save_output / name).write_text(text, encoding="utf-8")
            print(f"saved the findings and the report's text in {args.save_output}")
        elif not _check(args.check_output, now):
            status = 1
    if args.keep is None:
        shutil.rmtree(base)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
