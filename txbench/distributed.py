"""Distributed points inside one rank: process group, data parallelism, and steps every rank agrees on.

A point with ``parallel: ddp`` or ``fsdp`` runs as ``world_size`` processes that
``torchrun`` (PyTorch's elastic launcher) starts; each is a rank running
:mod:`txbench.runner.rank`, which calls :func:`setup` and then measures the point
as a single-process worker does. This module holds what differs:

- :func:`setup`: ``init_process_group`` from torchrun's environment (gloo on CPU,
  NCCL on CUDA with one GPU per rank), torch threads per rank (cores / world_size
  on CPU, each rank pinned to its own cores).
- :func:`parallelize`: ``DistributedDataParallel`` or FSDP2 (``fully_shard`` on every
  block, then on the root), applied after activation checkpointing and before the
  optimizer is built.
- :func:`shard_batch`: every rank takes its own rows of one global batch, so the
  global step is the same computation as one process with ``world_size`` times the
  batch (the first-step loss agrees; tests check it).
- :class:`RankTimer` and :func:`agree`: every rank must run exactly the same steps
  (a rank that stops early leaves the others waiting in a collective), so after each
  timed step the ranks exchange their phase times (outside the timed region) and the
  slowest rank's step is the step's time; every stop decision (warmup, measurement)
  is rank 0's, broadcast.

Outside a process group every function is a no-op, so the single-process path is
unchanged.
"""

from __future__ import annotations

import os

import torch

from txbench.host import cpu_cores

__all__ = ["active", "rank", "world", "setup", "teardown", "parallelize", "shard_batch", "agree", "RankTimer",
           "parallel_reason", "local_numel", "mean_over_ranks", "any_rank", "BACKENDS"]

#: process-group backend per device type
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


def active() -> bool:
    """True inside an initialized process group of more than one rank... or of one (a 1-rank DDP point)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def _collective_device() -> torch.device:
    """Where a collective's tensors live: the rank's GPU under NCCL, the CPU under gloo."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def parallel_reason(point) -> str | None:
    """Why this machine cannot host ``point``'s ranks (decided before launch), or None."""
    if point.parallel == "none":
        return None
    import torch.distributed as dist

    if not dist.is_available():
        return f"parallel {point.parallel}: this torch ({torch.__version__}) was built without torch.distributed"
    dev = torch.device(point.device)
    if active():  # a rank of the point: the launch already fitted the ranks to the machine
        pass
    elif dev.type == "cuda":
        n = torch.cuda.device_count()
        if point.world_size > n:
            return f"world_size {point.world_size} needs {point.world_size} GPUs (one per rank); this machine has {n}"
        if not dist.is_nccl_available():
            return "parallel on CUDA needs the NCCL backend, which this torch lacks"
    else:
        n = len(cpu_cores())
        if point.world_size > n:
            return (f"world_size {point.world_size} needs {point.world_size} CPU cores (at least one thread per rank); "
                    f"this machine has {n}")
        if not dist.is_gloo_available():
            return "parallel on CPU needs the gloo backend, which this torch lacks"
    if point.parallel == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2)
        except ImportError:
            return (f"fsdp means FSDP2 (torch.distributed.fsdp.fully_shard), which torch {torch.__version__} does not "
                    "have (it has only FSDP1); use parallel: ddp or torch >= 2.6")
    return None


def setup(device_type: str, world_size: int, threads: int | None) -> dict:
    """Join the process group torchrun set up; threads and device of this rank. Returns what it chose."""
    import torch.distributed as dist

    r, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    info = {"rank": r, "backend": BACKENDS[device_type]}
    if device_type == "cuda":
        torch.cuda.set_device(local)
        info["device_index"] = local
    else:
        cores = cpu_cores()
        per = threads or max(len(cores) // world_size, 1)
        mine = cores[local * per:(local + 1) * per]
        if len(mine) == per and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, mine)  # each rank on its own cores: no rank steals another's
            info["cpus"] = mine
        torch.set_num_threads(per)
        info["threads"] = per
    dist.init_process_group(backend=info["backend"])
    return info


def teardown() -> None:
    import torch.distributed as dist

    if active():
        dist.destroy_process_group()


def parallelize(model: torch.nn.Module, point, blocks: list[torch.nn.Module],
                find_unused: bool = False) -> torch.nn.Module:
    """Wrap ``model`` for ``point.parallel``; returns the module the step calls.

    ``ddp``: ``DistributedDataParallel`` (gradients all-reduced in 25 MiB buckets
    during the backward, ``gradient_as_bucket_view=True``; the returned wrapper is
    what the step calls). ``find_unused``: some parameters get no gradient in a step
    (a mixture of experts' idle expert, a branch not taken), which DDP must be told
    (``find_unused_parameters=True``, a graph traversal per step). ``fsdp``: FSDP2,
    ``fully_shard`` on each of ``blocks`` and then on the root, with its defaults:
    parameters, gradients and optimizer state sharded across the ranks and
    ``reshard_after_forward=True`` (ZeRO-3); no FSDP mixed-precision policy, because
    the point's precision is its autocast (as on one device), so the all-gathers and
    reduce-scatters move fp32. The model itself is the returned module.
    """
    if point.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        dev = torch.device(point.device)
        ids = [torch.cuda.current_device()] if dev.type == "cuda" else None
        # gradients as views of the all-reduce buckets: no second copy of them (and the memory count stays true)
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True,
                                       find_unused_parameters=find_unused)
    if point.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for b in blocks:
            fully_shard(b)
        fully_shard(model)
        return model
    return model


def shard_batch(batch, r: int, n: int, rows: int):
    """Rank ``r``'s rows of a global batch: every tensor (in tuples, lists, dicts) with ``n * rows`` rows is cut."""
    if torch.is_tensor(batch):
        return batch[r * rows:(r + 1) * rows] if batch.dim() and batch.shape[0] == n * rows else batch
    if isinstance(batch, dict):
        return type(batch)({k: shard_batch(v, r, n, rows) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard_batch(v, r, n, rows) for v in batch)
    return batch


def agree(value):
    """Rank 0's ``value`` on every rank (a broadcast); ``value`` itself outside a process group."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is True on any rank (an all-reduce); ``flag`` itself outside a process group."""
    if not active():
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(x: float) -> float:
    """The mean of ``x`` over the ranks (the global batch's loss from each rank's mean loss)."""
    if not active():
        return x
    import torch.distributed as dist

    t = torch.tensor([float(x)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def local_numel(p: torch.Tensor) -> int:
    """Elements this rank holds of ``p`` (a DTensor shard under FSDP2)."""
    to_local = getattr(p, "to_local", None)
    return to_local().numel() if to_local is not None else p.numel()


class RankTimer:
    """Wraps a phase timer: each step's phases of the slowest rank, every rank's own kept for the record.

    After each timed step the ranks all-gather their ``(fwd, bwd, opt)`` times; the
    exchange waits for the slowest rank but lies outside the timed region. Every
    rank returns the same numbers, so every rank's stop rule decides alike.
    """

    def __init__(self, timer):
        import torch.distributed as dist

        self.timer, self.name = timer, timer.name
        self.n = dist.get_world_size()
        self.dev = _collective_device()
        self.steps: list[list[float]] = []  # per step: every rank's total, by rank
        self.phases: list[list[list[float]]] = []  # per step: every rank's (fwd, bwd, opt)

    def __call__(self, step) -> tuple[float, float, float]:
        import torch.distributed as dist

        mine = self.timer(step)
        parts = [torch.empty(3, dtype=torch.float64, device=self.dev) for _ in range(self.n)]
        dist.all_gather(parts, torch.tensor(mine, dtype=torch.float64, device=self.dev))
        rows = [t.tolist() for t in parts]
        totals = [sum(r) for r in rows]
        self.steps.append(totals)
        self.phases.append(rows)
        slowest = max(range(self.n), key=totals.__getitem__)
        return tuple(rows[slowest])

    def reset(self) -> None:
        self.steps, self.phases = [], []

    def columns(self, keep: list[int] | None = None) -> dict:
        """Per-rank medians, the slowest rank and the median spread between ranks, over the steps since reset
        (only the steps at the indices ``keep`` when given: a measurement drops blocks taken under interference)."""
        if keep is not None:
            self.steps, self.phases = [self.steps[i] for i in keep], [self.phases[i] for i in keep]
        if not self.steps:
            return {}
        import statistics

        per_rank = [statistics.median(s[r] for s in self.steps) for r in range(self.n)]
        skew = statistics.median(max(s) - min(s) for s in self.steps)
        slow = statistics.median(max(s) for s in self.steps)
        by_rank = {f"rank_{ph}_ms_samples": [[p[r][k] for p in self.phases] for r in range(self.n)]
                   for k, ph in enumerate(("fwd", "bwd", "opt"))}
        return {**by_rank, "rank_step_ms_medians": per_rank,
                "rank_step_ms_samples": [[s[r] for s in self.steps] for r in range(self.n)],
                "slowest_rank": max(range(self.n), key=per_rank.__getitem__),
                "rank_skew_ms": skew, "rank_skew": skew / slow if slow else None}
