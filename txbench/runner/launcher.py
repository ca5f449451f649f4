"""Launchers: how a job reaches a worker process and how its failures come back as data.

:class:`WorkerLauncher` keeps one worker process and sends it point after point;
after any failure (exception, crash, timeout) the worker is killed and a fresh
one takes the next point, so no failure leaks state into later points. With
``isolate=True`` every point gets a fresh process. ``import torch`` costs about
3 s on a 2-core CPU, which is why reuse is the default.

The seam for later launchers (e.g. ``torchrun`` for DDP/FSDP points) is
:class:`Launcher`: ``run(job, timeout_s) -> Outcome``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from txbench.host import MALLOC_ENV

__all__ = ["Launcher", "WorkerLauncher", "Outcome"]

@dataclass
class Outcome:
    """What came back from a job: the answer, or how the worker failed."""

    answer: dict | None = None
    failure: str | None = None  # None | "timeout" | "died"
    message: str | None = None
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)


class Launcher:
    """Runs jobs (JSON-able dicts) in worker processes."""

    def run(self, job: dict, timeout_s: float) -> Outcome:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class WorkerLauncher(Launcher):
    """A persistent ``python -m txbench.runner.worker`` process, replaced after any failure."""

    def __init__(self, log_path: Path | None = None, isolate: bool = False, env: dict | None = None,
                 python: str | None = None, cwd: str | Path | None = None):
        self.log_path = Path(log_path) if log_path else None
        self.isolate = isolate
        self.env = env
        self.python = python or sys.executable
        self.cwd = str(cwd) if cwd else None
        self.hello: dict = {}  # the worker's first line: pid, protocol, txbench version
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._buf = b""

    # -- process management -------------------------------------------------
    def _start(self, deadline: float) -> str | None:
        if self._log is None:
            self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for k, v in MALLOC_ENV.items():  # the user's own settings win
            env.setdefault(k, v)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "txbench.runner.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=env,
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C reaches the sweep, which stops the worker itself
            )
        except OSError as e:
            self.proc = None
            return f"cannot run {self.python}: {e.strerror or e}"
        self._buf = b""
        ready = self._read_line(deadline)
        if ready is None:
            return self._failure_message()
        self.hello = ready
        return None

    def start(self, timeout_s: float = 120.0) -> str | None:
        """Start the worker now (it also starts on the first job); None, or why it did not start."""
        if self.proc is not None and self.proc.poll() is None:
            return None
        self._kill()
        err = self._start(deadline=time.monotonic() + timeout_s)
        if err:
            err = f"{err}\n{self._log_tail()}".strip()
            self._kill()
        return err

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for s in (self.proc.stdin, self.proc.stdout):
            try:
                s.close()
            except OSError:
                pass
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"kind": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None

    # -- protocol -------------------------------------------------------------
    def _read_line(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:  # the worker exited: reap it so its exit status is known
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _failure_message(self) -> str:
        code = self.proc.poll() if self.proc else None
        if code is None:
            return "worker did not answer"
        if code < 0:
            name = _signal_name(code)
            hint = " (often the kernel's out-of-memory killer)" if code == -signal.SIGKILL else ""
            return f"worker killed by {name}{hint}"
        return f"worker exited with code {code}"

    def _log_tail(self, n: int = 1500) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - n, 0))
            tail = f.read().decode(errors="replace")
        lines = [ln for ln in tail.splitlines() if ln.strip() and "USDT:" not in ln]
        return "\n".join(lines[-6:])

    def run(self, job: dict, timeout_s: float) -> Outcome:
        """Send ``job``; wait at most ``timeout_s`` (plus worker start-up) for the answer."""
        t0 = time.monotonic()
        err = self.start()
        if err:
            return Outcome(failure="died", message=f"worker failed to start: {err}")
        self.send(job)
        return self.receive(timeout_s, t0=t0)

    def send(self, job: dict) -> None:
        """Write ``job`` to the running worker without waiting (see :meth:`receive`)."""
        self._sent = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def receive(self, timeout_s: float, t0: float | None = None) -> Outcome:
        """The answer to the job last sent, waiting at most ``timeout_s`` from its sending."""
        t_job = getattr(self, "_sent", time.monotonic())
        t0 = t_job if t0 is None else t0
        answer = self._read_line(t_job + timeout_s)
        wall = time.monotonic() - t0
        if answer is None:
            timed_out = self.proc.poll() is None
            msg = f"no answer within {timeout_s:g} s; worker killed" if timed_out else self._failure_message()
            if self.proc.poll() is not None and self.proc.returncode == -signal.SIGKILL and not timed_out:
                failure = "killed"
            else:
                failure = "timeout" if timed_out else "died"
            self._kill()
            tail = self._log_tail()
            if tail and failure != "timeout":
                msg = f"{msg}; last log lines:\n{tail}"
            return Outcome(failure=failure, message=msg, wall_s=wall)
        if "fatal" in answer:
            self._kill()
            return Outcome(failure="died", message=f"worker error: {answer['fatal']}", wall_s=wall)
        rec = answer.get("record") or {}
        if self.isolate or rec.get("status") in ("error", "oom"):
            self._kill()  # a fresh worker for the next point
        return Outcome(answer=answer, wall_s=wall)
