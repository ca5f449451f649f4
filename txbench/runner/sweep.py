"""Run a suite: expand points, skip finished ones, measure the rest, store after each.

No torch import in this process: workers do the measuring. Progress is reported
through :class:`SweepCallbacks`; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from txbench.config import Point
from txbench.errors import StoreError, TxbenchError
from txbench.host import cpu_cores
from txbench.record import STATUSES, Record
from txbench.runner.launcher import Launcher, WorkerLauncher
from txbench.runner.torchrun import TorchrunLauncher
from txbench.store import (
    OPS_FILE,
    OPS_SCHEMA,
    POINTS_FILE,
    latest_run,
    load_points,
    new_run_dir,
    new_run_id,
    read_meta,
    read_rows,
    write_env,
    write_points,
    write_suite_yaml,
    write_table,
)
from txbench.suite import Suite, in_shard, slug

__all__ = ["SweepCallbacks", "SweepResult", "run_suite", "SweepInterrupted", "parse_devices"]


class SweepInterrupted(Exception):
    """Ctrl-C during a sweep; ``result`` holds what was stored before it."""

    def __init__(self, result: "SweepResult"):
        self.result = result
        super().__init__("interrupted")


class SweepCallbacks:
    """Override what you need; the CLI draws progress from these."""

    def on_start(self, run_dir: Path, total: int, done: int, todo: int) -> None: ...

    def on_point_start(self, index: int, point: Point) -> None: ...

    def on_point_end(self, index: int, point: Point, record: dict) -> None: ...


@dataclass
class SweepResult:
    run_dir: Path
    records: list[dict] = field(default_factory=list)
    skipped: int = 0  # points already in the run (resume)
    measured: int = 0
    wall_s: float = 0.0
    env: dict = field(default_factory=dict)


def _failure_record(point: Point, status: str, message: str, wall_s: float) -> dict:
    rec = Record.for_point(point, status, message, wall_s=wall_s)
    return rec.to_dict()


def _ops_table(rows: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=OPS_SCHEMA)


def parse_devices(text: str) -> list[int] | str:
    """``--devices``: ``"all"``, or CUDA devices as ``cuda:0,cuda:1`` (bare indices too); raises ValueError."""
    text = text.strip()
    if text == "all":
        return "all"
    out = []
    for part in (p.strip() for p in text.split(",")):
        idx = part[len("cuda:"):] if part.startswith("cuda:") else part
        if not idx.isdigit():
            raise ValueError(f"{part!r} is not a CUDA device; give cuda:0,cuda:1,... or all (CPU points run one at "
                             "a time, each with the machine's cores)")
        if int(idx) in out:
            raise ValueError(f"cuda:{idx} is given twice")
        out.append(int(idx))
    if not out:
        raise ValueError("no device given; give cuda:0,cuda:1,... or all")
    return out


def _device_indices(devices: list[int] | str, device: str, env: dict) -> list[int]:
    """The CUDA indices ``devices`` names on this machine; a TxbenchError (exit 2) before any point runs."""
    if device != "cuda":
        raise TxbenchError(f"--devices runs points on several CUDA devices at once, but this suite runs on {device} "
                           "(no CUDA device here, or the suite's device is cpu); leave --devices out")
    count = int(env.get("device_count") or 0)
    if devices == "all":
        return list(range(count))
    missing = [d for d in devices if d >= count]
    if missing:
        raise TxbenchError(f"--devices: {', '.join(f'cuda:{d}' for d in missing)} not on this machine, which has "
                           f"{count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return list(devices)


def _measure(launcher: Launcher, point: Point, job: dict, timeout_s: float) -> tuple[dict, list]:
    """One point's record and op rows through ``launcher``; a failed worker becomes a record saying how."""
    out = launcher.run(job, timeout_s=timeout_s)
    if out.answer is not None:
        return out.answer["record"], out.answer.get("ops", [])
    status = {"timeout": "timeout", "killed": "oom"}.get(out.failure, "error")
    return _failure_record(point, status, out.message, out.wall_s), []


class _DevicePool:
    """A worker per CUDA device (it sees only that device, as ``cuda``); points run on free devices at once.

    Points start in the suite's order: a point waits until the devices it needs
    (one, or ``world_size`` for a distributed point) are free. Measuring happens
    in threads (each blocks on its worker's pipe); storing and progress stay in
    the calling thread.
    """

    def __init__(self, devices: list[int], run_dir: Path, isolate: bool):
        self.devices = devices
        self.run_dir = run_dir
        self.workers = {d: WorkerLauncher(log_path=run_dir / f"worker-cuda{d}.log", isolate=isolate,
                                          env={**os.environ, "CUDA_VISIBLE_DEVICES": str(d)}) for d in devices}
        self.ranks: list[TorchrunLauncher] = []

    def _launcher(self, point: Point, slots: list[int]) -> Launcher:
        if point.parallel == "none":
            return self.workers[slots[0]]
        # a log per device set: the launcher reads torchrun's failure summary from its own log
        r = TorchrunLauncher(log_path=self.run_dir / f"worker-cuda{'-'.join(map(str, slots))}.log", cuda_devices=slots)
        self.ranks.append(r)
        return r

    def run(self, todo, unsupported, job_of, timeout_s, cb, store) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(self.devices)) as ex:
            try:
                self._schedule(ex, todo, unsupported, job_of, timeout_s, cb, store)
            except BaseException:  # Ctrl-C: stop the workers before the executor waits for their threads
                self.close()
                raise

    def _schedule(self, ex, todo, unsupported, job_of, timeout_s, cb, store) -> None:
        """Start each point when its devices are free (in the suite's order); store each as it finishes."""
        from concurrent.futures import FIRST_COMPLETED, wait

        free, running, pending = list(self.devices), {}, list(enumerate(todo))
        while pending or running:
            while pending:
                i, point = pending[0]
                need = point.world_size  # 1 unless parallel (validation)
                reason = unsupported.get(point.point_id)
                if reason is None and need > len(self.devices):
                    reason = f"world_size {need} needs {need} devices; --devices gave {len(self.devices)}"
                if reason is None and need > len(free):
                    break
                pending.pop(0)
                cb.on_point_start(i, point)
                if reason is not None:
                    store(i, point, Record.for_point(point, "unsupported", reason).to_dict(), [])
                    continue
                slots = free[:need]
                del free[:need]
                fut = ex.submit(_measure, self._launcher(point, slots), point, job_of(point), timeout_s)
                running[fut] = (i, point, slots)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i, point, slots = running.pop(fut)
                free += slots
                store(i, point, *fut.result())

    def close(self) -> None:
        for r in self.ranks:
            r.close()
        for w in self.workers.values():
            w.close()


def _machine_state(threads: int | None, device: str) -> dict:
    """The doctor's checks for env.json (never fails a run: a check that breaks is recorded as such)."""
    from txbench.doctor import machine_state

    try:
        return machine_state(threads=threads or len(cpu_cores()), device=device)
    except Exception as exc:  # the run's measurements matter more than its machine record
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_suite(
    suite: Suite,
    resolved: dict,
    *,
    results_dir: str | Path = "results",
    resume: str | Path | bool | None = None,
    profile: bool = True,
    trace: bool = False,
    isolate: bool = False,
    callbacks: SweepCallbacks | None = None,
    launcher: Launcher | None = None,
    shard: tuple[int, int] | None = None,
    devices: list[int] | str | None = None,
    points: list[Point] | None = None,
) -> SweepResult:
    """Run every point of ``suite`` not already in the run; store after each point.

    ``resume``: a run directory, or True for the latest run of this suite under
    ``results_dir``. ``shard=(k, n)`` runs only the points of shard k of n
    (:func:`txbench.suite.in_shard`); a resumed run keeps the shard it was started with.
    ``devices``: CUDA device indices (or ``"all"``) to run points on at once, one
    worker per device; a distributed point takes ``world_size`` of them (see
    :func:`parse_devices`). ``points``: run these points of the suite's model instead of its sweep (e.g. the
    largest batch that fits, confirmed by ``txbench estimate --confirm``). Raises :class:`SweepInterrupted` on
    Ctrl-C after storing what finished.
    """
    cb = callbacks or SweepCallbacks()
    t0 = time.monotonic()
    name = slug(suite.name)
    existing: list[dict] = []
    ops_rows: list[dict] = []
    if resume:
        run_dir = latest_run(results_dir, name) if resume is True else Path(resume)
        if run_dir is None:
            raise StoreError(f"no earlier run of suite {suite.name!r} under {results_dir}/{name}/ to resume")
        if not (run_dir / POINTS_FILE).exists():
            raise StoreError(f"{run_dir}: not a txbench run directory (no {POINTS_FILE})")
        load_points(run_dir)  # checks the schema version
        old_meta = read_meta(run_dir)
        if old_meta.get("shard") is not None:
            shard = tuple(old_meta["shard"])
        existing = read_rows(run_dir / POINTS_FILE)
        ops_path = run_dir / OPS_FILE
        if ops_path.exists():
            ops_rows = read_rows(ops_path)
    else:
        run_dir = new_run_dir(results_dir, name, new_run_id())
        write_suite_yaml(run_dir, resolved)

    own = launcher is None
    launcher = launcher or WorkerLauncher(log_path=run_dir / "worker.log", isolate=isolate)
    # points with parallel set run as ranks under torchrun, one process tree per point
    ranks = TorchrunLauncher(log_path=run_dir / "worker.log")
    result = SweepResult(run_dir=run_dir)
    chosen = points

    def points_on(device: str) -> list[Point]:
        if chosen is None:
            return suite.points(device)
        return [Point.from_dict({**p.to_dict(), "device": device}) for p in chosen]

    try:
        # 1. environment, device and availability, decided before any point runs
        env_out = launcher.run(
            {"kind": "env", "device": suite.device, "points": [p.to_dict() for p in points_on("cpu")]},
            timeout_s=600,
        )
        if env_out.answer is None:
            raise StoreError(f"could not start a worker: {env_out.message}")
        device = env_out.answer["device"]
        points = [p for p in points_on(device) if in_shard(p.point_id, shard)]
        env, unsupported = env_out.answer["env"], env_out.answer["unsupported"]
        if devices is not None:
            try:
                slots = _device_indices(devices, device, env)
            except TxbenchError:
                if not resume:  # nothing was measured: leave no empty run behind
                    launcher.close()
                    shutil.rmtree(run_dir, ignore_errors=True)
                    try:
                        run_dir.parent.rmdir()  # the suite's directory, when this was its first run
                    except OSError:
                        pass
                raise
        result.env = env
        meta = {"suite": suite.name, "run_id": run_dir.name, "device": device, "env": env}
        if shard is not None:
            meta["shard"] = list(shard)
        if resume:
            meta["env_first"] = old_meta.get("env")
        threads = env.get("torch_threads")
        env["machine_start"] = _machine_state(threads, device)  # what else ran as the run began (txbench doctor)
        write_env(run_dir, env)

        done = {r["point_id"] for r in existing if r.get("status") in STATUSES}
        records = [r for r in existing]
        todo = [p for p in points if p.point_id not in done]
        result.skipped = len(points) - len(todo)
        cb.on_start(run_dir, len(points), result.skipped, len(todo))
        mcfg = dataclasses.asdict(suite.measure_config())
        profile_steps = mcfg.pop("profile_steps") if profile else 0
        if not profile:
            mcfg.pop("profile_steps")
        trace_dir = run_dir / "traces"
        if trace:
            trace_dir.mkdir(exist_ok=True)

        def job_of(point: Point) -> dict:
            return {
                "kind": "point",
                "point": point.to_dict(),
                "measure": {**mcfg, "profile_steps": profile_steps},
                "profile_steps": profile_steps,
                "trace_path": str(trace_dir / f"{point.point_id}.json.gz") if trace else None,
                "snapshot_path": str(run_dir / "snapshots" / f"{point.point_id}.pickle"),
            }

        def store(i: int, point: Point, rec: dict, new_ops: list) -> None:
            records.append(rec)
            ops_rows.extend(new_ops)
            write_points(run_dir / POINTS_FILE, records, meta)
            if new_ops:
                write_table(run_dir / OPS_FILE, _ops_table(ops_rows), {"suite": suite.name})
            result.measured += 1
            cb.on_point_end(i, point, rec)

        if devices is None:
            for i, point in enumerate(todo):
                cb.on_point_start(i, point)
                if point.point_id in unsupported:
                    rec, new_ops = Record.for_point(point, "unsupported", unsupported[point.point_id]).to_dict(), []
                else:
                    rec, new_ops = _measure(ranks if point.parallel != "none" else launcher, point, job_of(point),
                                            suite.measure.timeout_s)
                store(i, point, rec, new_ops)
        else:
            launcher.close()  # the pool's workers each see one device; this one saw them all
            pool = _DevicePool(slots, run_dir, isolate)
            try:
                pool.run(todo, unsupported, job_of, suite.measure.timeout_s, cb, store)
            finally:
                pool.close()
        order = {p.point_id: k for k, p in enumerate(points)}
        records.sort(key=lambda r: order.get(r["point_id"], -1))  # the suite's order, however points finished
        if devices is not None and todo:
            write_points(run_dir / POINTS_FILE, records, meta)
        if not todo and not (run_dir / POINTS_FILE).exists():
            write_points(run_dir / POINTS_FILE, records, meta)
        result.records = records
        env["machine_end"] = _machine_state(threads, device)
        write_env(run_dir, env)
    except KeyboardInterrupt:
        ranks.close()
        launcher.close()
        result.records = read_rows(run_dir / POINTS_FILE) if (run_dir / POINTS_FILE).exists() else []
        result.wall_s = time.monotonic() - t0
        raise SweepInterrupted(result) from None
    finally:
        if own:
            launcher.close()
    result.wall_s = time.monotonic() - t0
    return result
