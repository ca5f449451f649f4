"""The record of one measured point: the row that goes into ``points.parquet``.

No torch import. Field names carry their units and are a contract: users'
notebooks and CI scripts read these columns by name (see docs/results.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from txbench.config import Point

__all__ = ["STATUSES", "FINAL_STATUSES", "Record"]

#: ok: measured. oom: out of memory. unsupported: decided before running (reason in ``error``).
#: error: an exception or a crashed worker. timeout: the worker exceeded its time limit.
STATUSES = ("ok", "oom", "unsupported", "error", "timeout")
#: Statuses that ``--resume`` does not retry.
FINAL_STATUSES = STATUSES


@dataclass
class Record:
    """Result of measuring one point. ``None`` means "not measured" (e.g. on failure)."""

    # identity
    point_id: str
    status: str
    error: str | None = None
    device: str = "cpu"
    arch: str = "decoder"
    d_model: int = 0
    n_layers: int = 0
    n_heads: int = 0
    ffn_mult: int = 0
    vocab_size: int = 0
    max_seq_len: int = 0
    norm: str = ""
    dropout: float = 0.0
    tied_embeddings: bool = True
    causal: bool = True
    bias: bool = True
    seq_len: int = 0
    batch_size: int = 0
    precision: str = ""
    attention: str = ""
    optimizer: str = ""
    lr: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = None  # requested threads (None: torch default)
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
    # throughput and FLOPs
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    flops_per_step: float | None = None  # analytic, see txbench.measure.flops
    attn_flops_per_step: float | None = None
    flops_counter_per_step: float | None = None  # torch.utils.flop_counter.FlopCounterMode
    flops_check_note: str | None = None
    tflops_per_s: float | None = None
    peak_tflops: float | None = None
    peak_source: str | None = None
    mfu: float | None = None
    # memory (bytes)
    peak_mem_bytes: int | None = None
    peak_mem_reserved_bytes: int | None = None
    mem_method: str | None = None
    param_bytes: int | None = None
    grad_bytes: int | None = None
    optimizer_state_bytes: int | None = None
    activation_mem_bytes: int | None = None  # peak minus params, grads and optimizer state
    params: int | None = None
    optimizer_impl: str | None = None
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
    # bookkeeping
    started_at: str | None = None
    wall_s: float | None = None  # the whole point, from worker start to record (incl. import and build)
    device_name: str | None = None

    @classmethod
    def for_point(cls, point: Point, status: str, error: str | None = None, **values) -> "Record":
        """A record carrying ``point``'s config columns plus ``values``."""
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = {k: v for k, v in point.to_dict().items() if k in names}
        return cls(point_id=point.point_id, status=status, error=error, **cfg, **values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]
