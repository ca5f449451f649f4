"""The launcher of distributed points: ``torchrun`` starts the ranks, this collects one record.

No torch import here (the sweep's process never imports torch). For a point with
``parallel`` set, :class:`TorchrunLauncher` runs::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node W \\
        --max-restarts 0 -m txbench.runner.rank JOB_DIR

``--standalone`` is torchrun's single-node rendezvous on a free port (a c10d store
on ``localhost:0``), so points never collide on a port. Each rank writes
``rank<R>.json`` (see :mod:`txbench.runner.rank`); the point's record is rank 0's,
with the per-rank peak memory (the row keeps the maximum) and the profile of
rank 0 plus that of the slowest rank when another.

Failures end the whole point and the sweep goes on:

- a rank whose point fails (exception, out-of-memory) writes its record and exits;
  torchrun stops the others; the row takes the first failure's status and message,
  prefixed with its rank;
- a rank that dies (a signal, the OOM killer) is named from torchrun's summary;
- a hang (a collective that never completes) hits the point's ``timeout_s``,
  counted from when every rank has started.

Every rank is killed afterwards in any case: torchrun starts each rank in its own
session, so the launcher kills torchrun's children (found in ``/proc``, and from
the ranks' pid files) and the ranks also die with torchrun (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from txbench.config import Point
from txbench.host import MALLOC_ENV, cpu_cores
from txbench.record import Record
from txbench.runner.launcher import Launcher, Outcome, _signal_name

__all__ = ["TorchrunLauncher", "merge_ranks", "START_TIMEOUT_S"]

#: seconds every rank has to start (import, rendezvous) before the point fails; timeout_s counts after that
START_TIMEOUT_S = 180.0


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux ``/proc``; empty elsewhere)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _kill(pid: int) -> None:
    for fn in (os.killpg, os.kill):  # each rank leads a session (and process group) of its own
        try:
            fn(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


_ROOT_RANK = re.compile(r"rank\s*:\s*(\d+)")
_ROOT_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)")


def _root_cause(log_text: str) -> tuple[int | None, int | None, int | None]:
    """Rank, exit code and pid of torchrun's "Root Cause (first observed failure)" in its log, if printed."""
    i = log_text.rfind("Root Cause")
    if i < 0:
        return None, None, None
    block = log_text[i:i + 2000]
    r, e = _ROOT_RANK.search(block), _ROOT_EXIT.search(block)
    return (int(r.group(1)) if r else None, int(e.group(1)) if e else None, int(e.group(2)) if e else None)


def merge_ranks(answers: list[dict]) -> dict:
    """One point's answer (``record``, ``ops``) from every rank's ``ok`` answer, ordered by rank."""
    recs = [a["record"] for a in answers]
    rec = dict(recs[0])
    peaks = [r.get("peak_mem_bytes") for r in recs]
    rec["rank_peak_mem_bytes"] = peaks if all(p is not None for p in peaks) else []
    if rec["rank_peak_mem_bytes"]:
        top = max(range(len(recs)), key=lambda i: peaks[i])
        rec["peak_mem_bytes"] = peaks[top]
        rec["activation_mem_bytes"] = recs[top].get("activation_mem_bytes")
    rec["wall_s"] = max((r.get("wall_s") or 0.0) for r in recs)
    ops = list(answers[0].get("ops", []))  # each op row carries its rank
    slow = rec.get("slowest_rank")
    if slow:  # the slowest rank's own profile, when it is not rank 0
        ops += answers[slow].get("ops", [])
    return {"record": rec, "ops": ops}


class TorchrunLauncher(Launcher):
    """Runs each ``point`` job as ``world_size`` ranks under torchrun; one process tree per point."""

    def __init__(self, log_path: Path | None = None, work_dir: Path | None = None, env: dict | None = None,
                 python: str | None = None, cuda_devices: list[int] | None = None):
        self.log_path = Path(log_path) if log_path else None
        self.work_dir = Path(work_dir) if work_dir else None
        self.env = env
        self.python = python or sys.executable
        self.cuda_devices = cuda_devices  # CUDA_VISIBLE_DEVICES of the ranks (None: all the machine's)
        self._proc: subprocess.Popen | None = None
        self._job_dir: Path | None = None

    def _command(self, world: int, job_dir: Path) -> list[str]:
        return [self.python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc-per-node", str(world), "--max-restarts", "0", "--monitor-interval", "0.2",
                "-m", "txbench.runner.rank", str(job_dir)]

    def _environment(self, point: dict) -> dict:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for k, v in MALLOC_ENV.items():
            env.setdefault(k, v)
        if point["device"].startswith("cuda"):
            if self.cuda_devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.cuda_devices))
        else:
            # torchrun would set 1 (with a warning) where unset; each rank sets its share itself
            share = point.get("threads") or max(len(cpu_cores()) // point["world_size"], 1)
            env.setdefault("OMP_NUM_THREADS", str(share))
        return env

    def run(self, job: dict, timeout_s: float) -> Outcome:
        point = job["point"]
        world = int(point["world_size"])
        t0 = time.monotonic()
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        job_dir = Path(tempfile.mkdtemp(prefix=f"dist-{Point.from_dict(point).point_id}-", dir=self.work_dir))
        self._job_dir = job_dir
        (job_dir / "job.json").write_text(json.dumps(job))
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        log_start = self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0
        stopped = False
        try:
            try:
                self._proc = subprocess.Popen(self._command(world, job_dir), stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=log, env=self._environment(point), start_new_session=True)
            except OSError as e:
                return Outcome(failure="died", message=f"cannot run torchrun with {self.python}: {e.strerror or e}")
            failure, message = self._wait(job_dir, world, timeout_s, t0)
            self._stop_all()
            stopped = True
            wall = time.monotonic() - t0
            answers = self._answers(job_dir, world)
            if failure is None and len(answers) == world and all(_ok(a) for a in answers.values()):
                return Outcome(answer=merge_ranks([answers[r] for r in range(world)]), wall_s=wall)
            if failure == "timeout":
                return Outcome(failure="timeout", message=message, wall_s=wall)
            return self._failed(point, answers, message, log_start, wall)
        finally:  # Ctrl-C included: no rank outlives its point
            if not stopped:
                self._stop_all()
            if log is not subprocess.DEVNULL:
                log.close()
            self._proc = None
            shutil.rmtree(job_dir, ignore_errors=True)
            self._job_dir = None

    def _wait(self, job_dir: Path, world: int, timeout_s: float, t0: float) -> tuple[str | None, str | None]:
        """Wait for torchrun to exit; ``(None, None)``, or a failure kind and message."""
        ready_at = None
        while self._proc.poll() is None:
            now = time.monotonic()
            if ready_at is None and len(list(job_dir.glob("rank*.pid"))) >= world:
                ready_at = now
            if ready_at is None and now - t0 > START_TIMEOUT_S:
                return "died", f"the {world} ranks did not all start within {START_TIMEOUT_S:g} s"
            if ready_at is not None and now - ready_at > timeout_s:
                done = sorted(int(p.stem[4:]) for p in job_dir.glob("rank*.json"))
                waiting = [r for r in range(world) if r not in done]
                return "timeout", (f"no answer within {timeout_s:g} s from rank(s) {', '.join(map(str, waiting))} of "
                                   f"{world} (a hung collective?); every rank killed")
            time.sleep(0.1)
        return None, None

    def _stop_all(self) -> None:
        """Kill torchrun and every rank it started, and wait until they are gone."""
        proc, job_dir = self._proc, self._job_dir
        if proc is None:
            return
        pids = set(_children(proc.pid))
        if job_dir is not None:
            for f in job_dir.glob("rank*.pid"):
                try:
                    pids.add(int(f.read_text()))
                except (OSError, ValueError):
                    pass
        for pid in pids:
            _kill(pid)
        _kill(proc.pid)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    @staticmethod
    def _answers(job_dir: Path, world: int) -> dict[int, dict]:
        out = {}
        for r in range(world):
            f = job_dir / f"rank{r}.json"
            if f.exists():
                try:
                    out[r] = json.loads(f.read_text())
                except (OSError, json.JSONDecodeError):
                    pass
        return out

    def _failed(self, point: dict, answers: dict[int, dict], message: str | None, log_start: int,
                wall: float) -> Outcome:
        """The first rank's failure as the point's record (or a launcher failure when no rank said why)."""
        failed = sorted((a for a in answers.values() if not _ok(a)), key=lambda a: a.get("failed_at") or 0.0)
        if failed:
            first = failed[0]
            rec = first.get("record")
            if rec is None:  # the rank failed before measuring (process group, rendezvous)
                rec = Record.for_point(Point.from_dict(point), "error", first.get("error")).to_dict()
            rec = dict(rec, error=f"rank {first['rank']} of {point['world_size']}: {rec.get('error')}")
            return Outcome(answer={"record": rec, "ops": []}, wall_s=wall)
        if message:
            return Outcome(failure="died", message=message, wall_s=wall)
        text = ""
        if self.log_path and self.log_path.exists():
            with open(self.log_path, "rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
        r, code, pid = _root_cause(text)
        code = code if code is not None else (self._proc.returncode if self._proc else None)
        who = f"rank {r} of {point['world_size']}" if r is not None else "torchrun"
        if code is not None and code < 0:
            hint = " (often the kernel's out-of-memory killer)" if code == -signal.SIGKILL else ""
            kind = "killed" if code == -signal.SIGKILL else "died"
            return Outcome(failure=kind, message=f"{who} (pid {pid}) killed by {_signal_name(code)}{hint}", wall_s=wall)
        return Outcome(failure="died", message=f"{who} exited with code {code} without a record", wall_s=wall)

    def close(self) -> None:
        self._stop_all()


def _ok(answer: dict) -> bool:
    return (answer.get("record") or {}).get("status") == "ok"
