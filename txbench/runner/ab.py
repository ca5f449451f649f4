"""``txbench ab``: both sides of a comparison live at once, interleaved block by block, decided sequentially.

No torch import in this process: each side is a worker (:mod:`txbench.runner.worker`),
possibly under another interpreter and another checkout. For each pair of
points (paired by position in the two expansions) both workers build and warm
up their point (``ab_open``, which also measures memory and FLOPs), then the
coordinator runs blocks of steps on them, in ``parallel`` mode (the default) at
the same time with half the cores each (the halves swapped every round), in
``alternate`` mode one after the other (A B, B A, A B, ...) with all cores each.
Each round's ratio of block medians is one unit of
:class:`txbench.gate.sequential.SequentialTest`, looked at ``looks`` times
over the point's budget ``max_s`` (both sides rebuild their step between looks);
the point ends when decided.

Both sides' results are ordinary run directories (``points.parquet`` with the
interleaved steps as samples), so ``report``, ``show`` and ``compare`` work on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from txbench.errors import SuiteError, TxbenchError
from txbench.fields import CONFIG_COLUMNS
from txbench.gate import LOOKS, SequentialTest, compare_loss, compare_memory, holm_alpha, result_columns, status_row
from txbench.host import cpu_cores
from txbench.labels import short_labels
from txbench.measure.stats import ci_rel_halfwidth, is_noisy, summarize
from txbench.record import Record
from txbench.runner.launcher import WorkerLauncher
from txbench.runner.worker import PROTOCOL
from txbench.store import POINTS_FILE, new_run_dir, new_run_id, write_env, write_points, write_suite_yaml
from txbench.suite import Suite, load_suite, slug

__all__ = ["AbError", "SideSpec", "AbConfig", "AbCallbacks", "AbResult", "run_ab", "round_order", "MODES", "SIDES"]

MODES = ("alternate", "parallel")
#: ``mode: auto`` (the default): parallel on CPU (measured faster and tighter on a 2-core runner); alternate on
#: CUDA, where parallel would put both sides on one GPU at once and each side's blocks would time the other's.
AUTO_MODE = {"cpu": "parallel", "cuda": "alternate"}
SIDES = ("baseline", "candidate")
#: Default budget of sampling per point: a 4-point suite stays within 5 minutes on a 2-core CPU.
MAX_S = 45.0
#: Target length of one block of steps, in seconds.
BLOCK_S = 0.25


#: Columns of an ab row beyond compare's: rounds, steps per block, seconds to the decision, spread of the units,
#: build epochs.
AB_COLUMNS = ("rounds", "steps_per_block", "decided_s", "unit_sd", "builds")


class AbError(TxbenchError):
    """A side cannot be set up: a bad interpreter, path, override or worker protocol (exit 2)."""


@dataclass
class SideSpec:
    """How one side runs: its interpreter, its working directory (prepended to PYTHONPATH), its overrides."""

    name: str
    python: str | None = None
    path: Path | None = None
    sets: list[str] = field(default_factory=list)

    def option(self, what: str) -> str:
        return f"--{self.name}-{what}"


@dataclass
class AbConfig:
    mode: str = "auto"
    max_s: float = MAX_S
    threshold: float = 0.05
    memory_threshold: float = 0.01
    alpha: float = 0.05
    block_s: float = BLOCK_S
    looks: int = LOOKS
    open_s: float = 1.0  # the measured part of ab_open (its samples are not used for the verdict)


class AbCallbacks:
    """Override what you need; the CLI draws progress from these."""

    def on_start(self, run_dirs: dict, total: int) -> None: ...

    def on_point_start(self, index: int, label: str) -> None: ...

    def on_look(self, index: int, rounds: int, ratio: float, lo: float, hi: float) -> None: ...

    def on_point_end(self, index: int, label: str, rows: list[dict]) -> None: ...


@dataclass
class AbResult:
    frame: pd.DataFrame
    run_dirs: dict
    wall_s: float


# ------------------------------------------------------------------ setting up the sides
@contextlib.contextmanager
def _side_imports(path: Path | None):
    """Import user code (factories checked while loading the suite) from ``path``, then forget it."""
    if path is None:
        yield
        return
    before, cwd, saved = set(sys.modules), os.getcwd(), list(sys.path)
    os.chdir(path)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = saved
        for name in set(sys.modules) - before:
            if not name.startswith(("txbench", "torch", "transformers")):
                del sys.modules[name]


def _load_side(suite_path: Path, side: SideSpec) -> tuple[Suite, dict]:
    with _side_imports(side.path):
        load_suite(suite_path)  # problems of the file itself are reported against the file
        try:
            suite, resolved = load_suite(suite_path, side.sets)
        except SuiteError as e:
            raise SuiteError(e.problems, f"{side.option('set')} {' '.join(side.sets)}") from None
    ranked = sorted({p.parallel for p in suite.points("cpu") if p.parallel != "none"})
    if ranked:  # a side is one worker process; ranks under torchrun have no interleaved blocks
        raise AbError(f"{side.name} side: txbench ab compares single-process points, and this suite has parallel "
                      f"{', '.join(ranked)} points; exclude them ({side.option('set')}), or run both sides with "
                      "txbench run and judge them with txbench compare")
    return suite, resolved


def _check_side(side: SideSpec) -> None:
    if side.python is not None:
        p = Path(side.python)
        found = p if p.is_file() else None
        if found is None and os.sep not in side.python:
            import shutil

            found = shutil.which(side.python)
        if not found or not os.access(found, os.X_OK):
            raise AbError(f"{side.option('python')} {side.python}: no such executable interpreter")
    if side.path is not None and not Path(side.path).is_dir():
        raise AbError(f"{side.option('path')} {side.path}: no such directory")


def _side_env(side: SideSpec) -> dict:
    env = dict(os.environ)
    if side.path is not None:
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(Path(side.path).resolve()) + (os.pathsep + old if old else "")
    return env


def _start(side: SideSpec, launcher: WorkerLauncher) -> None:
    err = launcher.start()
    if err:
        raise AbError(f"{side.name} side ({side.option('python')} {launcher.python}): could not start a txbench "
                      f"worker (is txbench installed for that interpreter?): {err.splitlines()[0]}")
    proto = launcher.hello.get("protocol", 1)
    if proto != PROTOCOL:
        raise AbError(f"{side.name} side ({side.option('python')} {launcher.python}) runs txbench "
                      f"{launcher.hello.get('txbench', '< 0.1')} with worker protocol {proto}; this txbench speaks "
                      f"protocol {PROTOCOL}: install the same txbench version on both sides")


# ------------------------------------------------------------------ records from blocks
def _with_blocks(rec: dict, fwd: list, bwd: list, opt: list, note: str) -> dict:
    """The open record with the interleaved steps as its samples, and what depends on the step time rescaled."""
    total = [f + b + o for f, b, o in zip(fwd, bwd, opt)]
    if not total:
        return rec
    out = dict(rec)
    old = rec.get("step_ms_median")
    out.update({k: v for k, v in summarize(total, "step_ms").items()})
    out.update(step_ms_samples=total, fwd_ms_samples=list(fwd), bwd_ms_samples=list(bwd), opt_ms_samples=list(opt),
               fwd_ms_median=float(np.median(fwd)), bwd_ms_median=float(np.median(bwd)),
               opt_ms_median=float(np.median(opt)), noisy=is_noisy(total), n_steps=len(total),
               ci_rel_halfwidth=ci_rel_halfwidth(total), stop_reason="ab")
    if old:
        scale = old / out["step_ms_median"]
        for k in ("tokens_per_s", "samples_per_s", "tflops_per_s", "mfu"):
            if out.get(k) is not None:
                out[k] = out[k] * scale
    out["measure_notes"] = "; ".join(x for x in (rec.get("measure_notes"), note) if x)
    return out


def _failed(point_dict: dict, status: str, message: str) -> dict:
    from txbench.config import Point

    return Record.for_point(Point.from_dict(point_dict), status, message).to_dict()


# ------------------------------------------------------------------ the coordinator
class _Pair:
    """Both sides' workers for one point pair."""

    def __init__(self, launchers: dict, timeout_s: float):
        self.launchers = launchers
        self.timeout_s = timeout_s

    def send_all(self, jobs: dict, order, timeout_s: float | None = None) -> dict:
        """Send each side its job at once and collect the answers (or failures)."""
        for s in order:
            self.launchers[s].send(jobs[s])
        return {s: self.launchers[s].receive(timeout_s or self.timeout_s) for s in order}

    def one_by_one(self, jobs: dict, order, timeout_s: float) -> dict:
        out = {}
        for s in order:
            out[s] = self.launchers[s].run(jobs[s], timeout_s)
            if out[s].answer is None or "error" in out[s].answer:
                break
        return out


def _pin(launchers: dict, r: int) -> None:
    """Parallel mode: give each side half of this process's CPUs, swapping the halves every round.

    Two processes running side by side do not see the same machine: one vCPU may
    take the interrupts or share its core with a busy neighbour. Swapping the
    halves each round puts each side on each half equally often, so that
    asymmetry cancels in the ratio as the drift does.
    """
    cpus = cpu_cores()
    if len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        return
    half = len(cpus) // 2
    halves = (set(cpus[:half]), set(cpus[half:2 * half]))
    for j, k in enumerate(round_order(r)):
        proc = launchers[k].proc
        if proc is None or proc.poll() is not None:
            continue
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        except OSError:
            tids = [proc.pid]
        for tid in tids:  # every thread: torch's intra-op and inter-op pools too
            try:
                os.sched_setaffinity(tid, halves[j])
            except OSError:
                pass


def _unpin(launchers: dict) -> None:
    if not hasattr(os, "sched_getaffinity"):
        return
    cpus = os.sched_getaffinity(0)
    for lau in launchers.values():
        if lau.proc is not None and lau.proc.poll() is None:
            try:
                for t in os.listdir(f"/proc/{lau.proc.pid}/task"):
                    os.sched_setaffinity(int(t), cpus)
            except OSError:
                pass


def round_order(r: int) -> tuple[str, str]:
    """Which side runs first in round ``r``: baseline, candidate, then candidate, baseline (A B B A ...)."""
    return SIDES if r % 2 == 0 else SIDES[::-1]


def _first_failure(out: dict) -> tuple[str, tuple[str, str]] | None:
    """(side, (status, message)) of the first side whose job failed or got no answer; None when both answered."""
    for k in SIDES:
        if k not in out:
            return k, ("error", "no answer")
        fail = _failure(out[k])
        if fail:
            return k, fail
    return None


def _failure(outcome) -> tuple[str, str] | None:
    """(status, message) when a job failed: the worker died or hung, or a step raised."""
    if outcome.answer is None:
        status = {"timeout": "timeout", "killed": "oom"}.get(outcome.failure, "error")
        return status, outcome.message or outcome.failure or "worker failed"
    if "error" in outcome.answer:
        msg = outcome.answer["error"]
        return ("oom" if "out of memory" in msg or "can't allocate memory" in msg else "error"), msg
    return None


def run_ab(suite_path, baseline: SideSpec, candidate: SideSpec, cfg: AbConfig | None = None, *,
           results_dir="results", callbacks: AbCallbacks | None = None) -> AbResult:
    """Run the A/B comparison of ``suite_path`` between the two sides; see the module docstring."""
    cfg = cfg or AbConfig()
    cb = callbacks or AbCallbacks()
    if cfg.mode not in MODES + ("auto",):
        raise AbError(f"--mode {cfg.mode}: choose from {', '.join(MODES)}")
    t_start = time.monotonic()
    sides = {"baseline": baseline, "candidate": candidate}
    for s in sides.values():
        _check_side(s)
    suite_path = Path(suite_path).absolute()  # loading a side runs in that side's directory
    loaded = {k: _load_side(suite_path, s) for k, s in sides.items()}
    suites = {k: v[0] for k, v in loaded.items()}
    counts = {k: len(v.points("cpu")) for k, v in suites.items()}
    if counts["baseline"] != counts["candidate"]:
        raise AbError(f"the sides expand to {counts['baseline']} (baseline) and {counts['candidate']} (candidate) "
                      "points; points are paired by position, so --baseline-set/--candidate-set must keep the "
                      "number of points the same")
    run_id = new_run_id()
    name = slug(suites["baseline"].name)
    dirs = {k: new_run_dir(results_dir, name, f"{run_id}-{k}") for k in sides}
    for k in sides:
        write_suite_yaml(dirs[k], loaded[k][1])
    launchers = {k: WorkerLauncher(log_path=dirs[k] / "worker.log", env=_side_env(s), python=s.python, cwd=s.path)
                 for k, s in sides.items()}
    try:
        with ThreadPoolExecutor(2) as pool:  # import torch on both sides at once
            list(pool.map(lambda k: _start(sides[k], launchers[k]), SIDES))
        return _run(suites, dirs, launchers, cfg, cb, t_start)
    finally:
        for lau in launchers.values():
            lau.close()


def _env(suites, launchers) -> dict:
    out = {}
    for k in SIDES:
        answer = launchers[k].run({"kind": "env", "device": suites[k].device,
                                   "points": [p.to_dict() for p in suites[k].points("cpu")]}, timeout_s=600)
        if answer.answer is None:
            raise AbError(f"{k} side: the worker failed before any point: {answer.message}")
        out[k] = answer.answer
    if out["baseline"]["device"] != out["candidate"]["device"]:
        raise AbError(f"the sides resolve to different devices ({out['baseline']['device']} vs "
                      f"{out['candidate']['device']}); set device: in the suite")
    return out


def _run(suites, dirs, launchers, cfg: AbConfig, cb: AbCallbacks, t_start: float) -> AbResult:
    envs = _env(suites, launchers)
    device = envs["baseline"]["device"]
    if cfg.mode == "auto":
        cfg = dataclasses.replace(cfg, mode=AUTO_MODE.get(device.split(":")[0], "alternate"))
    points = {k: suites[k].points(device) for k in SIDES}
    metas = {}
    for k in SIDES:
        write_env(dirs[k], envs[k]["env"])
        metas[k] = {"suite": suites[k].name, "run_id": dirs[k].name, "device": device, "env": envs[k]["env"],
                    "ab": {"side": k, "mode": cfg.mode}}
    measure = {k: suites[k].measure_config() for k in SIDES}
    threads = None
    if cfg.mode == "parallel":
        threads = max((os.cpu_count() or 2) // 2, 1)
    records: dict[str, list] = {k: [] for k in SIDES}
    rows: list[dict] = []
    m = len(points["baseline"])
    changed = 0
    cb.on_start(dirs, m)
    labels = short_labels(pd.DataFrame([p.to_dict() for p in points["candidate"]])) if m else []
    for i in range(m):
        pair = {k: points[k][i] for k in SIDES}
        cb.on_point_start(i, labels[i])
        recs, seq = _measure_pair(i, pair, envs, launchers, measure, threads, cfg, holm_alpha(cfg.alpha, m, changed),
                                  cb)
        for k in SIDES:
            records[k].append(recs[k])
            write_points(dirs[k] / POINTS_FILE, records[k], metas[k])
        new_rows = _rows_for(pair, recs, seq, cfg, labels[i])
        changed += any(r["metric"] == "step_ms" and r["verdict"] in ("regression", "improvement") for r in new_rows)
        rows.extend(new_rows)
        cb.on_point_end(i, labels[i], new_rows)
    cfg_cols = [c for c in CONFIG_COLUMNS if any(c in r for r in rows)]
    frame = pd.DataFrame(rows, columns=result_columns(cfg_cols) + list(AB_COLUMNS))
    ident = {k: {"schema_version": None, "device": device, "device_name": envs[k]["env"].get("device_name"),
                 "suite": suites[k].name, "run_id": dirs[k].name, "torch_version": envs[k]["env"].get("torch_version"),
                 "torch_threads": envs[k]["env"].get("torch_threads"), "hostname": envs[k]["env"].get("hostname"),
                 "git_commit": envs[k]["env"].get("git_commit")} for k in SIDES}
    soft = [f"{key}: {ident['baseline'][key]!r} vs {ident['candidate'][key]!r}" for key in ("torch_version",)
            if ident["baseline"][key] != ident["candidate"][key]]
    tests = int((frame["metric"] == "step_ms").sum()) if len(frame) else 0
    frame.attrs["compare"] = {
        "baseline": ident["baseline"], "candidate": ident["candidate"], "comparable": True, "mismatches": [],
        "warnings": soft, "metrics": ["step_ms", "peak_mem_bytes", "loss"], "alpha": cfg.alpha,
        "threshold": cfg.threshold,
        "rules": {}, "block_s": cfg.block_s, "correction": "holm", "tests": tests, "units": "ab", "rounds": [1, 1],
        "advice": [], "unmatched": [], "matched": m,
        "ab": {"mode": cfg.mode, "max_s": cfg.max_s, "looks": cfg.looks, "run_dirs": {k: str(v) for k, v in
                                                                                       dirs.items()},
               "wall_s": round(time.monotonic() - t_start, 1)},
    }
    return AbResult(frame=frame, run_dirs=dirs, wall_s=time.monotonic() - t_start)


def _measure_pair(i, pair, envs, launchers, measure, threads, cfg: AbConfig, alpha: float, cb: AbCallbacks):
    """Open both sides' point, run blocks until decided or out of budget; (records, sequential state)."""
    pd_ = {k: pair[k].to_dict() for k in SIDES}
    unsupported = {k: envs[k]["unsupported"].get(pair[k].point_id) for k in SIDES}
    timeout = min(measure[k].timeout_s for k in SIDES)
    if any(unsupported.values()):
        recs = {k: (_failed(pd_[k], "unsupported", unsupported[k]) if unsupported[k] else None) for k in SIDES}
        for k in SIDES:  # the other side still gets measured alone: its status is the news
            if recs[k] is None:
                out = launchers[k].run(_open_job(pd_[k], measure[k], threads, cfg), timeout)
                fail = _failure(out)
                recs[k] = _failed(pd_[k], *fail) if fail else out.answer["record"]
                launchers[k].run({"kind": "ab_close"}, 60)
        return recs, None
    for k in SIDES:
        launchers[k].start()
    both = _Pair(launchers, timeout)
    opened = both.send_all({k: _open_job(pd_[k], measure[k], threads, cfg) for k in SIDES}, SIDES)
    recs = {}
    for k in SIDES:
        fail = _failure(opened[k])
        recs[k] = _failed(pd_[k], *fail) if fail else opened[k].answer["record"]
    if any(recs[k]["status"] != "ok" for k in SIDES):
        _close(launchers)
        return recs, None
    # loss parity's A/A: each side built again from the same seed (the first epoch's build), its first steps'
    # loss against the open's; what differs there is the side's own nondeterminism, not a change
    again = both.one_by_one({k: {"kind": "ab_rebuild"} for k in SIDES}, SIDES, timeout)
    failed = _first_failure(again)
    if failed:
        k, (status, msg) = failed
        recs[k] = {**recs[k], "status": status, "error": f"while building it again: {msg}"}
        _close(launchers)
        return recs, None
    aa = _aa_noise(recs, {k: again[k].answer for k in SIDES})
    # the block length from each side's step time alone (the open measured both sides at once)
    probe = both.one_by_one({k: {"kind": "ab_block", "steps": 3} for k in SIDES}, SIDES, timeout)
    failed = _first_failure(probe)
    if failed:
        k, (status, msg) = failed
        recs[k] = {**recs[k], "status": status, "error": f"during the interleaved blocks: {msg}"}
        _close(launchers)
        return recs, None
    step_ms = max(float(np.median(np.add(np.add(probe[k].answer["fwd"], probe[k].answer["bwd"]),
                                         probe[k].answer["opt"]))) for k in SIDES)
    n = max(int(round(cfg.block_s * 1e3 / max(step_ms, 1e-3))), 1)
    block_timeout = max(60.0, 50 * n * step_ms / 1e3)
    test = SequentialTest(alpha=alpha, threshold=cfg.threshold)
    samples = {k: {"fwd": [], "bwd": [], "opt": []} for k in SIDES}
    units: list[float] = []
    t0 = time.monotonic()
    look = 1
    failure = None
    verdict = None
    epochs: list[list[float]] = [[]]
    faults = {k: 0 for k in SIDES}  # minor page faults in the timed blocks (an allocator that maps fresh pages)
    sampled = 0.0  # seconds of rounds; rebuilds between epochs do not count against the budget
    hit = _Interference()
    pids = {k: launchers[k].proc.pid for k in SIDES if launchers[k].proc is not None}
    while verdict is None:
        order = round_order(len(units) + hit.rounds)
        if cfg.mode == "parallel":
            _pin(launchers, len(units) + hit.rounds)
        # the other side's work is not interference: it is the design of parallel mode, reported on its own
        jobs = {k: {"kind": "ab_block", "steps": n, "exclude_pids": [p for s, p in pids.items() if s != k]}
                for k in SIDES}
        t_round = time.monotonic()
        out = (both.send_all(jobs, order, block_timeout) if cfg.mode == "parallel"
               else both.one_by_one(jobs, order, block_timeout))
        failure = _first_failure(out)
        if failure:
            break
        if hit.drop({k: out[k].answer.get("interference") or {} for k in SIDES}, time.monotonic() - t_round):
            if hit.seconds <= cfg.max_s:
                continue  # both sides' blocks of this round leave the test; a clean round comes later
            hit.exhausted = True  # the machine stayed busy for a whole budget: the point is contended
            break
        sampled += time.monotonic() - t_round
        for k in SIDES:
            for ph in ("fwd", "bwd", "opt"):
                samples[k][ph].extend(out[k].answer[ph])
            faults[k] += int(out[k].answer.get("minflt") or 0)
        med = {k: float(np.median(np.add(np.add(out[k].answer["fwd"], out[k].answer["bwd"]), out[k].answer["opt"])))
               for k in SIDES}
        unit = math.log(med["candidate"] / med["baseline"]) if min(med.values()) > 0 else math.nan
        units.append(unit)
        epochs[-1].append(unit)
        if look > cfg.looks or sampled < cfg.max_s * look / cfg.looks:
            continue
        lk = test.look(epochs, look / cfg.looks)
        look += 1
        cb.on_look(i, len(units), lk.ratio, lk.ci_low, lk.ci_high)
        verdict = lk.verdict
        if verdict is None and epochs[-1]:
            # a new build epoch: both sides' steps rebuilt at new addresses, so their layout bias is sampled too
            rebuilt = both.one_by_one({k: {"kind": "ab_rebuild"} for k in SIDES}, SIDES, timeout)
            failure = _first_failure(rebuilt)
            if failure:
                break
            epochs.append([])
    decided_s = time.monotonic() - t0
    if cfg.mode == "parallel":
        _unpin(launchers)
    _close(launchers)
    steps_done = max(len(samples["baseline"]["fwd"]), 1)
    note = (f"txbench ab: {len(units)} rounds of {n}-step blocks in {len([e for e in epochs if e])} builds, "
            f"{cfg.mode} with the other side, {decided_s:.0f} s; page faults per step "
            + " vs ".join(f"{faults[k] / steps_done:.0f}" for k in SIDES) + hit.note(cfg.mode))
    for k in SIDES:
        recs[k] = {**_with_blocks(recs[k], samples[k]["fwd"], samples[k]["bwd"], samples[k]["opt"], note),
                   **hit.columns(len(units))}
    if failure:
        k, (status, msg) = failure
        recs[k] = {**recs[k], "status": status, "error": f"during the interleaved blocks: {msg}"}
        return recs, None
    return recs, {"test": test, "units": units, "epochs": epochs, "steps_per_block": n, "decided_s": decided_s,
                  "contended": hit.contended(), "dropped_rounds": hit.rounds, "aa": aa}


def _aa_noise(recs: dict, again: dict) -> dict:
    """The larger of the two sides' A/A differences (open vs rebuilt) of the loss and the gradient norm; a side
    whose worker records no trajectory (an older txbench) gives none."""
    from txbench.numerics import max_rel_diff

    out = {}
    for key, col in (("loss", "loss_trajectory"), ("grad_norm", "grad_norm_trajectory")):
        diffs = [max_rel_diff(again[k].get(col), recs[k].get(col))[0] for k in SIDES]
        diffs = [d for d in diffs if d is not None]
        out[key] = max(diffs) if diffs else None
    return out


class _Interference:
    """Rounds dropped because either side's block ran under interference, and what the sides took from each other."""

    def __init__(self):
        self.rounds, self.seconds, self.reasons, self.exhausted = 0, 0.0, [], False
        self.mutual = {k: [] for k in SIDES}  # the other side's cores during each kept block (parallel mode)

    def drop(self, blocks: dict, seconds: float) -> bool:
        """True when this round must leave the test (either side's block was contaminated)."""
        why = [f"{k}: {b['reason']}" for k, b in blocks.items() if b.get("contaminated")]
        if why:
            self.rounds += 1
            self.seconds += seconds
            self.reasons.extend(why)
            return True
        for k, b in blocks.items():
            if b.get("excluded_cores") is not None:
                self.mutual[k].append(float(b["excluded_cores"]))
        return False

    def contended(self) -> str | None:
        """Why the point is contended (dropped rounds outlasted the budget before a verdict), or None."""
        if self.exhausted:
            return f"{self.rounds} rounds dropped for interference ({self.reasons[-1]})"
        return None

    def note(self, mode: str) -> str:
        out = ""
        if self.rounds:
            out += f"; {self.rounds} rounds dropped for interference (first: {self.reasons[0]})"
        if mode == "parallel" and all(self.mutual.values()):
            out += ("; parallel mode: each side's block ran beside the other's, which held "
                    + " and ".join(f"{np.mean(self.mutual[k]):.2f} cores during the {k}'s" for k in SIDES))
        return out

    def columns(self, kept: int) -> dict:
        state = "contended" if self.exhausted else "dropped_blocks" if self.rounds else "none"
        return {"interference": state, "blocks": kept + self.rounds, "blocks_dropped": self.rounds,
                "interference_reason": self.reasons[0] if self.reasons else None}


def _open_job(point: dict, measure, threads, cfg: AbConfig) -> dict:
    mc = {"warmup_s": measure.warmup_s, "warmup_min_steps": measure.warmup_min_steps,
          "warmup_max_steps": measure.warmup_max_steps, "min_steps": 3, "max_steps": 50, "max_s": cfg.open_s,
          "target_ci": 1.0, "profile_steps": 0, "timeout_s": measure.timeout_s, "memory": measure.memory}
    return {"kind": "ab_open", "point": point, "measure": mc, "threads": threads}


def _close(launchers) -> None:
    for lau in launchers.values():
        if lau.proc is not None and lau.proc.poll() is None:
            lau.run({"kind": "ab_close"}, 60)


def _rows_for(pair, recs, seq, cfg: AbConfig, label: str) -> list[dict]:
    config = {k: v for k, v in pair["candidate"].to_dict().items() if k in CONFIG_COLUMNS}
    base = {"point_id": pair["candidate"].point_id, "label": label, **config,
            "status_baseline": recs["baseline"]["status"], "status_candidate": recs["candidate"]["status"]}
    rb, rc = recs["baseline"], recs["candidate"]
    if not (rb["status"] == "ok" and rc["status"] == "ok"):
        return [{**base, **status_row(rb["status"], rc["status"], rb.get("error"), rc.get("error"))}]
    test, units = seq["test"], seq["units"]
    last = test.looks[-1] if test.looks else None
    n_rounds = len(units)
    x = np.asarray(units, dtype=float)
    x = x[np.isfinite(x)]
    p = math.nan  # the verdict comes from the looks' intervals, not from one p-value
    ratio = last.ratio if last else (math.exp(float(x.mean())) if x.size else math.nan)
    builds = len([e for e in seq.get("epochs", [units]) if e])
    verdict = last.verdict if last and last.verdict else "inconclusive"
    if seq.get("contended"):
        verdict = "inconclusive"  # a verdict on rounds the machine made wrong would be the machine's, not the code's
    lo, hi = (last.ci_low, last.ci_high) if last else (math.nan, math.nan)
    change = f"{100 * (ratio - 1):+.1f}%" if math.isfinite(ratio) else "no ratio"
    level = f"{100 * (1 - last.alpha):.3g}% interval" if last and last.alpha else "no look"
    when = f"after {n_rounds} rounds in {builds} builds ({seq['decided_s']:.0f} s)"
    thr = f"{100 * cfg.threshold:g}%"
    if verdict == "regression":
        note = f"{change} > {thr} {when}, {level} above 0"
    elif verdict == "improvement":
        note = f"{change} beyond {thr} {when}, {level} below 0"
    elif verdict == "unchanged":
        note = f"{level} within ±{thr} {when}"
    elif seq.get("contended"):
        note = f"contended: {seq['contended']}; run txbench doctor, then again on a quiet machine"
    else:
        need = _budget_needed(lo, hi, ratio, cfg, seq["decided_s"])
        note = f"undecided {when}: {level} [{100 * (lo - 1):+.1f}%, {100 * (hi - 1):+.1f}%] {need}"
    timed = {"metric": "step_ms", "threshold": cfg.threshold, "baseline_median": rb["step_ms_median"],
             "candidate_median": rc["step_ms_median"], "ratio": ratio, "ratio_ci_low": lo, "ratio_ci_high": hi,
             "p_value": p, "p_adjusted": math.nan, "verdict": verdict, "note": note,
             "n_baseline": len(rb.get("step_ms_samples") or []), "n_candidate": len(rc.get("step_ms_samples") or []),
             "blocks_baseline": n_rounds, "blocks_candidate": n_rounds, "units": "rounds", "steps_needed": None,
             "rounds": n_rounds, "steps_per_block": seq["steps_per_block"], "decided_s": round(seq["decided_s"], 1),
             "unit_sd": float(x.std(ddof=1)) if x.size >= 2 else math.nan, "builds": builds}
    mem = compare_memory(rb.get("peak_mem_bytes"), rc.get("peak_mem_bytes"), cfg.memory_threshold)
    loss = compare_loss({**config, **rb}, {**config, **rc}, aa=seq.get("aa"))
    return [{**base, **timed}, {**base, "metric": "peak_mem_bytes", "threshold": cfg.memory_threshold, **mem},
            {**base, "metric": "loss", **loss}]


def _budget_needed(lo: float, hi: float, ratio: float, cfg: AbConfig, spent_s: float) -> str:
    """What would decide an undecided point: a longer budget, from the interval shrinking as 1/sqrt(time)."""
    if not all(math.isfinite(v) and v > 0 for v in (lo, hi, ratio)):
        return "; too few rounds for an interval: raise --max-s"
    half = (math.log(hi) - math.log(lo)) / 2
    h = math.log1p(cfg.threshold)
    margin = abs(abs(math.log(ratio)) - h)
    if margin < 1e-3:
        return "; the change sits on the threshold: no budget decides it"
    factor = (half / margin) ** 2
    if factor > 25:
        return "; the change is about the threshold: more than 25x the budget would be needed"
    return f"; about --max-s {math.ceil(spent_s * factor * 1.2)} would decide"
