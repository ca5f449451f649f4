"""The record of one measured point: the row that goes into ``points.parquet``.

No torch import. Field names carry their units and are a contract: users'
notebooks and CI scripts read these columns by name (see docs/results.md).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field

from txbench.config import Point
from txbench.fields import BY_NAME, FIELDS, to_json

__all__ = ["STATUSES", "INTERFERENCE", "Record", "column_types", "is_contended", "blocks_dropped"]

#: ok: measured. oom: out of memory. unsupported: decided before running (reason in ``error``).
#: error: an exception or a crashed worker. timeout: the worker exceeded its time limit.
#: Every one is final: ``--resume`` retries only points without a record with one of these statuses.
STATUSES = ("ok", "oom", "unsupported", "error", "timeout", "predicted_oom")
#: Values of the ``interference`` column. none: no block of steps was taken under interference.
#: dropped_blocks: some were, and their steps left the samples (the rest are clean). contended: the point
#: stayed contended after re-measuring, so its figures are what it reached and are not trustworthy.
#: Null (runs from before the column existed) reads as unknown, treated like none.
INTERFERENCE = ("none", "dropped_blocks", "contended")


def is_contended(row) -> bool:
    """Whether a row (a mapping or a pandas row) was measured contended: its timings are not trustworthy."""
    return row.get("interference") == "contended"


def blocks_dropped(row) -> int:
    """Blocks of steps a row dropped for interference (0 when none, or when not recorded)."""
    n = row.get("blocks_dropped")
    try:
        n = int(n)
    except (TypeError, ValueError):  # None, NaN, pandas' NA
        return 0
    return max(n, 0)


@dataclass
class Record:
    """Result of measuring one point. ``None`` means "not measured" (e.g. on failure)."""

    # identity; the point's config columns (txbench.fields) follow these three in the table
    point_id: str
    status: str
    error: str | None = None
    config: dict = field(default_factory=dict, repr=False)  # flat config (Point.to_dict), one column per field
    # timing (milliseconds)
    step_ms_median: float | None = None
    step_ms_mean: float | None = None
    step_ms_std: float | None = None
    step_ms_iqr: float | None = None
    step_ms_min: float | None = None
    step_ms_max: float | None = None
    step_ms_ci_low: float | None = None
    step_ms_ci_high: float | None = None
    step_ms_samples: list[float] = field(default_factory=list)
    fwd_ms_median: float | None = None
    bwd_ms_median: float | None = None
    opt_ms_median: float | None = None
    fwd_ms_samples: list[float] = field(default_factory=list)
    bwd_ms_samples: list[float] = field(default_factory=list)
    opt_ms_samples: list[float] = field(default_factory=list)
    noisy: bool | None = None
    n_steps: int = 0
    ci_rel_halfwidth: float | None = None  # achieved 95% CI half-width of the median / median
    stop_reason: str | None = None  # "ci" | "max_steps" | "max_s"
    warmup_steps: int = 0
    warmup_s: float | None = None
    measure_s: float | None = None
    timer: str | None = None  # "cuda_event" | "perf_counter_ns"
    torch_threads: int | None = None  # torch.get_num_threads() during measurement
    # interference: what other work on the machine did to the timed steps (txbench.measure.interference)
    interference: str | None = None  # "none" | "dropped_blocks" | "contended" (null in runs before it was measured)
    interference_reason: str | None = None  # the worst block's reason, e.g. "other processes held 0.95 of 2 cores"
    blocks: int | None = None  # timed blocks (steps between two interference readings, at least MIN_BLOCK_S)
    blocks_dropped: int | None = None  # blocks taken under interference: their steps left the samples
    dropped_step_ms_samples: list[float] = field(default_factory=list)  # the steps of the dropped blocks
    block_interference: str | None = None  # JSON list, one object per block: steps, wall_s, other_cores, ...
    other_cores_max: float | None = None  # most cores other processes held during any block
    remeasures: int | None = None  # times the point was measured again after waiting for the machine to quiet
    quiet_waited_s: float | None = None  # seconds spent waiting for quiet before those re-measurements
    # throughput and FLOPs; a distributed point's throughput is global (all ranks), its FLOPs and MFU per rank
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    tokens_per_s_per_device: float | None = None  # tokens_per_s / world_size
    global_batch_size: int | None = None  # batch_size * world_size
    first_loss: float | None = None  # loss of the first forward (no grad, before any step), global batch mean
    flops_per_step: float | None = None  # analytic, see txbench.measure.flops
    attn_flops_per_step: float | None = None
    flops_counter_per_step: float | None = None  # torch.utils.flop_counter.FlopCounterMode
    attn_flops_causal_per_step: float | None = None  # counted attention, causal calls halved (FlashAttention's)
    flops_check_note: str | None = None
    tflops_per_s: float | None = None
    peak_tflops: float | None = None
    peak_source: str | None = None
    mfu: float | None = None
    recompute_flops_per_step: float | None = None  # FLOPs activation checkpointing recomputes (same convention)
    hfu: float | None = None  # hardware FLOPs utilization: (flops_per_step + recompute) / step time / peak
    # memory (bytes)
    peak_mem_bytes: int | None = None
    peak_mem_reserved_bytes: int | None = None
    mem_method: str | None = None
    param_bytes: int | None = None
    grad_bytes: int | None = None
    optimizer_state_bytes: int | None = None
    activation_mem_bytes: int | None = None  # peak minus params, grads and optimizer state
    # where the peak goes (one profiled step, torch's memory profiler): each category's bytes at the peak
    peak_parameters_bytes: int | None = None
    peak_gradients_bytes: int | None = None
    peak_optimizer_state_bytes: int | None = None
    peak_activations_bytes: int | None = None  # saved for backward
    peak_temporaries_bytes: int | None = None  # op workspaces and backward's gradients of activations
    peak_inputs_bytes: int | None = None  # the batch
    peak_other_bytes: int | None = None  # tensors the profiler gave no category
    peak_phase: str | None = None  # forward | backward | optimizer: the phase the peak falls in
    peak_op: str | None = None  # the aten op running at the peak
    peak_breakdown_error: float | None = None  # |sum of the categories - peak_mem_bytes| / peak_mem_bytes
    memory_timeline: str | None = None  # JSON: t_ms, phases, peak_ms and bytes per category over the profiled step
    activation_holders: str | None = None  # JSON object: module -> bytes it saved for backward (eager forward)
    mem_fragmentation_bytes: int | None = None  # CUDA: peak reserved minus peak allocated
    alloc_retries: int | None = None  # CUDA: allocations that had to free cached blocks and retry
    memory_snapshot: str | None = None  # CUDA oom: the allocator's snapshot of the failing step, relative to the run
    predicted_peak_bytes: int | None = None  # pre-flight estimate (txbench estimate, run --estimate)
    estimate_note: str | None = None  # what the estimate leaves out, or why there is none
    params: int | None = None
    optimizer_impl_used: str | None = None  # "fused" | "foreach" | "forloop": what ran (requested: optimizer_impl)
    # torch.compile (the compile field; null when not compiled)
    compile_s: float | None = None  # first compiled steps minus the same number of eager steps (compile time)
    graph_breaks: int | None = None  # graph breaks dynamo took while compiling the forward
    recompiles: int | None = None  # frames compiled again after the first compiled step (the timed steps allow none)
    compile_loss_rel_diff: float | None = None  # |compiled loss - eager loss| / |eager loss|, same weights and batch
    compile_cache: str | None = None  # "warm" | "cold" | "partial": whether inductor's caches held the graphs
    # loss parity: the first measure.parity_steps steps from the seeded weights and the fixed batch
    loss_trajectory: list[float] = field(default_factory=list)  # each step's loss (distributed: mean over ranks)
    grad_norm_trajectory: list[float] = field(default_factory=list)  # each step's global gradient L2 norm
    # distributed points (parallel ddp/fsdp): the step time is the slowest rank's in each step
    backend: str | None = None  # process-group backend: gloo (CPU) or nccl (CUDA)
    rank_step_ms_medians: list[float] = field(default_factory=list)  # each rank's own median step time
    rank_step_ms_samples: list[list[float]] = field(default_factory=list)  # per rank, its time of each timed step
    rank_fwd_ms_samples: list[list[float]] = field(default_factory=list)  # per rank and step, its forward + loss
    rank_bwd_ms_samples: list[list[float]] = field(default_factory=list)  # ... its backward
    rank_opt_ms_samples: list[list[float]] = field(default_factory=list)  # ... its optimizer step
    slowest_rank: int | None = None  # the rank with the largest median step time
    rank_skew_ms: float | None = None  # median over steps of (slowest - fastest rank's step time)
    rank_skew: float | None = None  # rank_skew_ms / median step time of the slowest rank
    rank_peak_mem_bytes: list[int] = field(default_factory=list)  # peak_mem_bytes of each rank (the row: max)
    comm_ms_per_step: float | None = None  # profiled: time any collective ran (union of their intervals), rank 0
    comm_exposed_ms_per_step: float | None = None  # of which no compute overlapped it (the step waited)
    comm_share: float | None = None  # comm_ms_per_step / profiled_step_ms
    comm_exposed_share: float | None = None  # comm_exposed_ms_per_step / profiled_step_ms
    # attention kernel verification (filled by the profiler pass)
    attention_kernel: str | None = None
    attention_verified: bool | None = None
    # profiler pass (a separate pass after timing; never used for throughput)
    profile_s: float | None = None  # wall time of the profiler pass
    profiled_step_ms: float | None = None  # mean step time under the profiler (inflated by it)
    gpu_busy_ms_per_step: float | None = None  # union of kernel intervals per profiled step (CUDA)
    gpu_idle_ms_per_step: float | None = None  # profiled step time with no kernel running (CUDA)
    gpu_idle_share: float | None = None  # idle / profiled step time (CUDA)
    kernel_launches_per_step: float | None = None  # CUDA kernel launches per step
    trace_path: str | None = None  # Chrome/Perfetto trace, relative to the run directory
    measure_notes: str | None = None  # what this point could not measure and why ("; " between notes)
    # bookkeeping
    started_at: str | None = None
    wall_s: float | None = None  # the whole point, from worker start to record (incl. import and build)
    device_name: str | None = None

    @classmethod
    def for_point(cls, point: Point, status: str, error: str | None = None, **values) -> "Record":
        """A record carrying ``point``'s config columns plus ``values`` (unknown names raise TypeError)."""
        return cls(point_id=point.point_id, status=status, error=error, config=point.to_dict(), **values)

    @property
    def optimizer_impl(self) -> str | None:
        """The optimizer implementation that ran (``optimizer_impl_used``); the requested one is in ``config``."""
        return self.optimizer_impl_used

    @classmethod
    def from_columns(cls, point_id: str, status: str, error: str | None = None, **columns) -> "Record":
        """A record from flat Parquet column names (config and measurements mixed), as a row reads back."""
        config = {k: v for k, v in columns.items() if k in BY_NAME}
        return cls(point_id=point_id, status=status, error=error, config=config,
                   **{k: v for k, v in columns.items() if k not in BY_NAME})

    def to_dict(self) -> dict:
        """The Parquet row: identity, every config column of the field table, then the measurements."""
        out = {"point_id": self.point_id, "status": self.status, "error": self.error}
        for f in FIELDS:
            v = self.config.get(f.name, f.default)
            out[f.name] = to_json(v) if f.type is dict else v
        for f in dataclasses.fields(self):
            if f.name not in _HEAD:
                value = getattr(self, f.name)
                out[f.name] = copy.deepcopy(value) if f.type.startswith("list") else value
        return out

    @classmethod
    def columns(cls) -> list[str]:
        """Column names of points.parquet, in order."""
        return list(column_types())


_HEAD = ("point_id", "status", "error", "config")


def column_types() -> dict[str, object]:
    """Column name -> Python type (``int``, ``float | None``, ``list[float]``, ...) of points.parquet, in order."""
    hints = typing.get_type_hints(Record)
    out: dict[str, object] = {"point_id": hints["point_id"], "status": hints["status"], "error": hints["error"]}
    for f in FIELDS:
        tp = str if f.type is dict else f.type  # mappings are stored as JSON text
        out[f.name] = tp | None if f.nullable else tp
    out.update({f.name: hints[f.name] for f in dataclasses.fields(Record) if f.name not in _HEAD})
    return out
