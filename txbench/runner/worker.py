"""The worker process: reads jobs as JSON lines on stdin, answers JSON lines on its protocol pipe.

Started by :class:`txbench.runner.launcher.WorkerLauncher` as
``python -m txbench.runner.worker``. Anything the libraries print goes to
stderr (the launcher's log file), so the protocol stream carries only answers.

Jobs:
- ``{"kind": "env", "device": "auto"|"cpu"|"cuda", "points": [...]}`` -> ``{"env": {...},
  "device": resolved, "unsupported": {point_id: reason}}`` (point ids on the resolved device)
- ``{"kind": "point", "point": {...}, "measure": {...}, "profile_steps": N, "trace_path": str|None,
  "snapshot_path": str|None}``
  -> ``{"record": {...}, "ops": [...]}``. A Python exception in the point is
  answered as a record with ``status="error"``; the traceback goes to stderr.

The interleaved A/B jobs of ``txbench ab`` (:mod:`txbench.runner.ab`) keep one point
built between jobs:
- ``{"kind": "ab_open", "point": {...}, "measure": {...}, "threads": N|None}`` measures the
  point as ``point`` does (short budget, no profiler) and keeps its step warm -> ``{"record": {...}}``
- ``{"kind": "ab_block", "steps": n}`` -> ``{"fwd": [...], "bwd": [...], "opt": [...]}`` (ms), or
  ``{"error": message}`` when a step raises (the point is then closed)
- ``{"kind": "ab_rebuild", "warmup": n}`` builds the open point's step afresh and warms it up
  -> ``{"rebuilt": true, "loss_trajectory": [...], "grad_norm_trajectory": [...]}`` (its first steps' loss
  parity, as the open's record has it) (or ``{"error": message}``)
- ``{"kind": "ab_close"}`` -> ``{"closed": true}``

The first line the worker writes is ``{"ready": true, "pid": ..., "protocol": PROTOCOL,
"txbench": version}``; a coordinator refuses a worker whose protocol differs from its own.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

__all__ = ["main", "run_point_job", "env_job", "PROTOCOL"]

#: Version of the job protocol; bump it when a job or an answer changes shape.
PROTOCOL = 2


def env_job(job: dict) -> dict:
    """Environment fingerprint and the unsupported reason of each point (decided before launch)."""
    import torch

    from txbench.config import Point
    from txbench.measure.env import fingerprint
    from txbench.pipeline import unsupported_reason

    device = job.get("device") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {"env": fingerprint(device), "device": device, "unsupported": {}}
    for d in job.get("points", []):
        p = Point.from_dict({**d, "device": device})
        reason = unsupported_reason(p)
        if reason:
            out["unsupported"][p.point_id] = reason
    return out


def run_point_job(job: dict) -> dict:
    """Measure one point (and profile it unless ``profile_steps`` is 0)."""
    import torch

    from txbench._faults import fault_for
    from txbench.config import MeasureConfig, Point
    from txbench.pipeline import run_point
    from txbench.record import Record

    point = Point.from_dict(job["point"])
    cfg = MeasureConfig(**job.get("measure", {}))
    t0 = time.perf_counter()
    torch.set_num_threads(_DEFAULT_THREADS)
    ops: list[dict] = []
    try:
        run = run_point(point, cfg, hooks=fault_for(point), profile_steps=job.get("profile_steps", 0),
                        trace_path=job.get("trace_path"), snapshot_path=job.get("snapshot_path"))
        record, ops = run.record, run.ops
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        record = Record.for_point(point, "error", _first_line(exc))
    finally:
        _cleanup(point.device)
    record.wall_s = time.perf_counter() - t0
    return {"record": record.to_dict(), "ops": ops}


_AB: dict = {}  # the point an ab session keeps built: step, timer, device


def ab_open_job(job: dict) -> dict:
    """Measure the point with the given (short) budget and keep its step built and warm for blocks."""
    import torch

    from txbench._faults import fault_for
    from txbench.config import MeasureConfig, Point
    from txbench.measure.timing import make_timer
    from txbench.pipeline import measure_point_keep
    from txbench.record import Record

    ab_close_job({})
    point = Point.from_dict(job["point"])
    cfg = MeasureConfig(**job.get("measure", {}))
    threads = job.get("threads") or _DEFAULT_THREADS
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        record, step = measure_point_keep(point, cfg, hooks=fault_for(point))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        record, step = Record.for_point(point, "error", _first_line(exc)), None
    if step is not None:
        if job.get("threads"):  # the point's own thread count yields to the coordinator's split of the cores
            torch.set_num_threads(job["threads"])
            _AB["threads"] = job["threads"]
        _AB.update(step=step, timer=make_timer(point.device), device=point.device, point=point,
                   warmup=cfg.warmup_min_steps, parity_steps=cfg.parity_steps)
    else:
        _cleanup(point.device)
    record.wall_s = time.perf_counter() - t0
    return {"record": record.to_dict()}


def ab_block_job(job: dict) -> dict:
    """Run ``steps`` timed steps of the open point; phase times in ms, page faults, and the block's interference.

    ``exclude_pids``: processes whose CPU use is not interference (the other side's worker in parallel mode);
    their share is reported as ``excluded_cores``. Only the CPUs this process is pinned to are read.
    """
    step, timer = _AB.get("step"), _AB.get("timer")
    if step is None:
        return {"error": "no point is open (ab_open first)"}
    import resource

    import torch

    from txbench.host import cpu_cores
    from txbench.measure.interference import BlockMonitor
    from txbench.pipeline.stages import run_steps

    monitor = BlockMonitor(cores=cpu_cores(), threads=torch.get_num_threads(), exclude_pids=job.get("exclude_pids", ()))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    monitor.start()
    try:
        fwd, bwd, opt = run_steps(step, timer, int(job.get("steps", 1)))
        out = {"fwd": fwd, "bwd": bwd, "opt": opt}
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        ab_close_job({})
        return {"error": _first_line(exc)}
    out["interference"] = monitor.close(len(fwd))
    out["minflt"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults  # page faults of the block
    return out


def ab_rebuild_job(job: dict) -> dict:
    """Build the open point's step afresh (new tensors at new addresses) and warm it up.

    Where a build lands in memory moves its step time by a few percent for as long
    as it lives (alignment, cache sets); a random-sized allocation before the build
    moves it further, so successive builds sample that effect instead of fixing it.
    """
    import gc
    import random

    import torch

    from txbench.pipeline import build_step
    from txbench.pipeline.stages import run_steps

    point, timer = _AB.get("point"), _AB.get("timer")
    if point is None:
        return {"error": "no point is open (ab_open first)"}
    _AB.pop("step", None)
    _AB.pop("pad", None)
    gc.collect()
    try:
        _AB["pad"] = torch.empty(random.SystemRandom().randrange(1, 1 << 20), dtype=torch.uint8, device=point.device)
        step = build_step(point)
        step.record_parity(int(_AB.get("parity_steps", 0)))  # the same first steps again: an A/A of the loss
        if _AB.get("threads"):
            torch.set_num_threads(_AB["threads"])
        run_steps(step, timer, max(int(job.get("warmup", _AB.get("warmup", 3))), step.parity_steps, 1))
        losses, norms = step.parity()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        ab_close_job({})
        return {"error": _first_line(exc)}
    _AB["step"] = step
    return {"rebuilt": True, "loss_trajectory": losses, "grad_norm_trajectory": norms}


def ab_close_job(job: dict) -> dict:
    device = _AB.pop("device", None)
    _AB.clear()
    if device is not None:
        _cleanup(device)
    return {"closed": True}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:1000]


def _cleanup(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


_DEFAULT_THREADS = 0


_AB_JOBS = {"ab_open": ab_open_job, "ab_block": ab_block_job, "ab_rebuild": ab_rebuild_job, "ab_close": ab_close_job}


def main() -> None:
    global _DEFAULT_THREADS
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (Python or C) go to the log, not the protocol
    sys.stdout = sys.stderr
    import torch

    _DEFAULT_THREADS = torch.get_num_threads()
    from txbench import __version__

    proto.write(json.dumps({"ready": True, "pid": os.getpid(), "protocol": PROTOCOL, "txbench": __version__}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        kind = job.get("kind")
        try:
            if kind == "env":
                answer = env_job(job)
            elif kind == "point":
                answer = run_point_job(job)
            elif kind in _AB_JOBS:
                answer = _AB_JOBS[kind](job)
            elif kind == "exit":
                break
            else:
                answer = {"fatal": f"unknown job kind {kind!r}"}
        except Exception as exc:  # a bug in txbench itself: report it, keep the protocol alive
            traceback.print_exc(file=sys.stderr)
            answer = {"fatal": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(answer, default=_json_default) + "\n")
        sys.stderr.flush()


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


if __name__ == "__main__":
    main()
