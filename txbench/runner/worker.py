"""The worker process: reads jobs as JSON lines on stdin, answers JSON lines on its protocol pipe.

Started by :class:`txbench.runner.launcher.WorkerLauncher` as
``python -m txbench.runner.worker``. Anything the libraries print goes to
stderr (the launcher's log file), so the protocol stream carries only answers.

Jobs:
- ``{"kind": "env", "device": "auto"|"cpu"|"cuda", "points": [...]}`` -> ``{"env": {...},
  "device": resolved, "unsupported": {point_id: reason}}`` (point ids on the resolved device)
- ``{"kind": "point", "point": {...}, "measure": {...}, "profile_steps": N, "trace_path": str|None}``
  -> ``{"record": {...}, "ops": [...]}``. A Python exception in the point is
  answered as a record with ``status="error"``; the traceback goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

__all__ = ["main", "run_point_job", "env_job"]


def env_job(job: dict) -> dict:
    """Environment fingerprint and the unsupported reason of each point (decided before launch)."""
    import torch

    from txbench.config import Point
    from txbench.measure.env import fingerprint
    from txbench.measure.point import unsupported_reason

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

    from txbench.config import MeasureConfig, Point
    from txbench.measure.point import measure_point_keep
    from txbench.record import Record

    point = Point.from_dict(job["point"])
    cfg = MeasureConfig(**job.get("measure", {}))
    t0 = time.perf_counter()
    torch.set_num_threads(_DEFAULT_THREADS)
    ops: list[dict] = []
    try:
        record, step = measure_point_keep(point, cfg)
        if step is not None and job.get("profile_steps", 0) > 0:
            from txbench.profile import profile_point

            t_prof = time.perf_counter()
            ops, info = profile_point(step, point, steps=job["profile_steps"], trace_path=job.get("trace_path"))
            for k, v in info.items():
                if k == "measure_notes" and record.measure_notes:  # keep the memory measurement's note too
                    v = f"{record.measure_notes}; {v}"
                setattr(record, k, v)
            record.profile_s = time.perf_counter() - t_prof
        del step
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:1000]
        record = Record.for_point(point, "error", msg)
    finally:
        _cleanup(point.device)
    record.wall_s = time.perf_counter() - t0
    return {"record": record.to_dict(), "ops": ops}


def _cleanup(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


_DEFAULT_THREADS = 0


def main() -> None:
    global _DEFAULT_THREADS
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (Python or C) go to the log, not the protocol
    sys.stdout = sys.stderr
    import torch

    _DEFAULT_THREADS = torch.get_num_threads()
    proto.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
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
