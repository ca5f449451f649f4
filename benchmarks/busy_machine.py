"""Numbers on a busy machine: does txbench mark every point another process made wrong?

One busy-loop process (``python -c "while True: pass"``) is the hog; the suite is a tiny reference
model with 2 torch threads (on 2 cores the sharpest case: OpenMP threads wait at barriers for the one
that lost its core). Four phases, each ``txbench run --no-profile --no-report --json`` (or ``ab``):

1. ``quiet``: the reference medians (the machine checked with ``txbench doctor`` first);
2. ``hog``: the hog runs throughout. Goal: every point whose median is more than 10% off the quiet
   run is marked ``contended``; zero points wrong and unmarked;
3. ``partway``: the hog starts ``--hog-after`` seconds into the run and stops ``--hog-for`` seconds
   later. Goal: every point within 10% of the quiet run, or marked (``contended``); reported: blocks
   dropped, points re-measured, the extra wall time;
4. ``ab``: ``txbench ab`` A/A (the same checkout on both sides) with the hog switched on and off
   every ``--toggle-s`` seconds. Goal: no regression verdict.

Usage: python benchmarks/busy_machine.py [--json out.json] [--phases quiet,hog,partway,ab]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SUITE = """\
name: busy
description: tiny decoder, 2 threads, 6 points (the busy-machine benchmark)
device: cpu
model: {arch: decoder, d_model: 64, n_layers: 2, n_heads: 4, vocab_size: 512}
measure: {warmup_s: 0.3, min_steps: 10, max_steps: 400, max_s: 2, target_ci: 0.02, profile_steps: 0,
          quiet_wait_s: 8, retries: 2, timeout_s: 300}
sweep:
  seq_len: [64, 128]
  batch_size: [4]
  precision: [fp32]
  attention: [naive, sdpa_math, sdpa_flash]
  threads: [2]
"""


class Hog:
    """One busy-loop process, switched on and off."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def on(self) -> None:
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def off(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _txbench(*args: str) -> tuple[dict, float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "txbench", *args], capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - t0
    if out.returncode not in (0, 1):
        raise SystemExit(f"txbench {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout), wall


def run_suite(suite: Path, results: Path) -> tuple[list[dict], float]:
    from txbench.store import load_points

    summary, wall = _txbench("run", str(suite), "--no-profile", "--no-report", "--json", "--results-dir",
                             str(results))
    df = load_points(summary["run_dir"])
    cols = ["point_id", "label", "step_ms_median", "step_ms_iqr", "noisy", "interference", "interference_reason",
            "blocks", "blocks_dropped", "remeasures", "quiet_waited_s", "wall_s"]
    from txbench.labels import short_labels

    df["label"] = short_labels(df)
    return df[cols].to_dict("records"), wall


def judge(quiet: list[dict], busy: list[dict]) -> dict:
    """Per point: the ratio to the quiet median and whether a wrong point (>10% off) was marked."""
    base = {r["point_id"]: r["step_ms_median"] for r in quiet}
    rows, wrong_unmarked = [], 0
    for r in busy:
        ratio = r["step_ms_median"] / base[r["point_id"]]
        wrong = abs(ratio - 1) > 0.10
        marked = r["interference"] == "contended"
        wrong_unmarked += wrong and not marked
        rows.append({**r, "ratio": ratio, "wrong": wrong, "marked": marked})
    return {"rows": rows, "wrong_unmarked": wrong_unmarked,
            "blocks_dropped": int(sum(r["blocks_dropped"] or 0 for r in busy)),
            "remeasured_points": int(sum(1 for r in busy if (r["remeasures"] or 0) > 0)),
            "contended_points": int(sum(1 for r in busy if r["interference"] == "contended"))}


def _later(seconds: float, fn) -> threading.Timer:
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()
    return t


def _doctor() -> dict:
    out = subprocess.run([sys.executable, "-m", "txbench", "doctor", "--format", "json", "--threads", "2"],
                         capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--phases", default="quiet,hog,partway,ab")
    ap.add_argument("--hog-after", type=float, default=8.0, help="partway: seconds before the hog starts")
    ap.add_argument("--hog-for", type=float, default=12.0, help="partway: seconds the hog runs")
    ap.add_argument("--toggle-s", type=float, default=5.0, help="ab: the hog switches every this many seconds")
    ap.add_argument("--ab-max-s", type=float, default=20.0)
    args = ap.parse_args()
    phases = args.phases.split(",")
    work = Path(tempfile.mkdtemp(prefix="txbench-busy-"))
    suite = work / "busy.yaml"
    suite.write_text(SUITE)
    results = work / "results"
    hog = Hog()
    out: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "doctor_before": _doctor()}
    if out["doctor_before"]["contaminated"]:
        print("warning: txbench doctor says the machine is busy before the quiet run", file=sys.stderr)
    try:
        quiet, out["quiet_wall_s"] = run_suite(suite, results)
        out["quiet"] = quiet
        if "hog" in phases:
            hog.on()
            time.sleep(0.5)
            busy, wall = run_suite(suite, results)
            hog.off()
            out["hog"] = {**judge(quiet, busy), "wall_s": wall}
        if "partway" in phases:
            on = _later(args.hog_after, hog.on)
            off = _later(args.hog_after + args.hog_for, hog.off)
            part, wall = run_suite(suite, results)
            on.cancel()
            off.cancel()
            hog.off()
            out["partway"] = {**judge(quiet, part), "wall_s": wall, "extra_wall_s": wall - out["quiet_wall_s"],
                              "hog_after_s": args.hog_after, "hog_for_s": args.hog_for}
        if "ab" in phases:
            stop = threading.Event()

            def toggle():
                state = False
                while not stop.wait(args.toggle_s):
                    state = not state
                    hog.on() if state else hog.off()

            th = threading.Thread(target=toggle, daemon=True)
            th.start()
            body, wall = _txbench("ab", str(suite), "--baseline-path", str(REPO), "--candidate-path", str(REPO),
                                  "--max-s", str(args.ab_max_s), "--format", "json", "--results-dir", str(results))
            stop.set()
            th.join()
            hog.off()
            step = [r for r in body["rows"] if r["metric"] == "step_ms"]
            out["ab"] = {"wall_s": wall, "verdicts": [r["verdict"] for r in step],
                         "regressions": sum(r["verdict"] == "regression" for r in step),
                         "notes": [r["note"] for r in step]}
    finally:
        hog.off()
    text = json.dumps(out, indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)
    bad = (out.get("hog", {}).get("wrong_unmarked", 0) + out.get("partway", {}).get("wrong_unmarked", 0)
           + out.get("ab", {}).get("regressions", 0))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
