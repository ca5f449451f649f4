"""One rank of a distributed point: what ``torchrun`` starts, ``world_size`` times.

Started by :class:`txbench.runner.torchrun.TorchrunLauncher` as
``python -m torch.distributed.run ... -m txbench.runner.rank JOB_DIR``. It reads
``JOB_DIR/job.json`` (the worker's ``point`` job), joins the process group
(:func:`txbench.distributed.setup`), measures and profiles the point exactly as
a single-process worker does (:func:`txbench.runner.worker.run_point_job`; the
stop rules and step times are agreed between the ranks), and writes
``JOB_DIR/rank<R>.json``: ``{"rank", "pid", "record", "ops", "failed_at"}``.

A rank whose point does not end ``ok`` (an exception, an out-of-memory) writes its
file and exits with code 1 at once: torchrun, started with ``--max-restarts 0``,
then stops every other rank (which may be waiting in a collective that will never
complete). The launcher reads the files and keeps the first failure.

Before anything else the rank writes ``JOB_DIR/rank<R>.pid`` and asks Linux to
kill it when torchrun dies (``PR_SET_PDEATHSIG``): the launcher can then stop a
hung point completely, though torchrun starts each rank in a session of its own.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's pid files are the fallback
        return
    if os.getppid() == 1:  # torchrun died before the call
        os._exit(1)


def main() -> None:
    job_dir = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    _die_with_parent()
    (job_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    out = {"rank": rank, "pid": os.getpid(), "failed_at": None}
    job = json.loads((job_dir / "job.json").read_text())
    try:
        import torch

        from txbench import distributed
        from txbench.runner import worker

        point = job["point"]
        info = distributed.setup(point["device"].split(":")[0], point["world_size"], point.get("threads"))
        worker._DEFAULT_THREADS = info.get("threads") or torch.get_num_threads()  # run_point_job sets it
        if rank:
            job = {**job, "trace_path": None}  # rank 0 writes the point's trace
        answer = worker.run_point_job(job)
    except Exception as exc:  # the process group itself (a rendezvous, a backend)
        traceback.print_exc(file=sys.stderr)
        answer = {"record": None, "ops": [], "error": f"{type(exc).__name__}: {str(exc).strip()[:500]}"}
    out.update(answer)
    for op in out.get("ops") or []:
        op["rank"] = rank
    status = (out.get("record") or {}).get("status")
    if status != "ok":
        out["failed_at"] = time.time()
    from txbench.cache import write_json
    from txbench.runner.worker import _json_default

    write_json(job_dir / f"rank{rank}.json", out, default=_json_default)  # atomic: the launcher never reads half
    sys.stderr.flush()
    if status != "ok":
        os._exit(1)  # torchrun stops the other ranks
    from txbench import distributed

    distributed.teardown()


if __name__ == "__main__":
    main()
