"""One training step of the reference Transformer, split into phases.

Phases: ``fwd`` (forward + loss), ``bwd`` (backward), ``opt`` (optimizer step
and ``zero_grad(set_to_none=True)``; with fp16 also the grad scaler's unscale,
inf check and update).

Precisions (what each means, exactly):

=========  =================  ===============================  ====================  =============
name       weights (master)   activations / matmuls            gradients             optimizer
=========  =================  ===============================  ====================  =============
fp32       fp32               fp32; on CUDA TF32 disabled      fp32                  fp32 state
tf32       fp32               fp32 tensors, matmuls and convs  fp32                  fp32 state
                              on TF32 tensor cores (CUDA only)
bf16       fp32               ``torch.autocast(bfloat16)``:    fp32 (autocast casts  fp32 state
                              matmuls/attention in bf16,       back to the fp32
                              softmax, norms, loss in fp32     weights' dtype)
fp16       fp32               ``torch.autocast(float16)``,     fp32, loss scaled by  fp32 state,
                              as bf16                          ``GradScaler``        step skipped on inf
=========  =================  ===============================  ====================  =============

Levers (docs/suites.md#levers), each a point field:

- ``compile``: ``torch.compile`` of the model's forward (with the loss); the
  backward is the graph AOTAutograd derives from it; the optimizer step stays
  eager. :meth:`TrainStep.compile_warmup` compiles before the warmup and
  measures the compile time and the compiled-vs-eager loss;
  :meth:`TrainStep.timed_steps` makes a recompile during the timed steps an
  error instead of a timing that mixes code versions.
- ``checkpointing``: ``torch.utils.checkpoint`` (non-reentrant) around every
  block; ``selective`` saves the outputs of matmuls and attention kernels
  (:data:`SAVED_OPS`) and recomputes everything else. Hugging Face models use
  their ``gradient_checkpointing_enable``; a factory model exposes its blocks
  as ``module.blocks`` (an ``nn.ModuleList``).
- ``optimizer_impl``: ``auto`` (fused where this torch supports it on the
  device, else foreach; SGD foreach), ``fused``, ``foreach``, ``forloop``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time

import torch

from txbench import numerics as _numerics
from txbench.attention import sdpa_context
from txbench.config import Point
from txbench.errors import LeverUnsupported
from txbench.model import Transformer, make_batch
from txbench.torch_compat import dynamo_counts

__all__ = ["TrainStep", "precision_reason", "autocast_dtype", "lever_reason", "LeverUnsupported", "CompileFailed",
           "RecompileError", "CheckpointedBlock", "SAVED_OPS", "PHASES", "is_oom", "LOSS_TOLERANCE"]

PHASES = ("fwd", "bwd", "opt")

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: relative difference of the compiled and the eager loss (same weights, same batch) a compiled point may have
LOSS_TOLERANCE = _numerics.LOSS_TOLERANCE


def autocast_dtype(precision: str) -> torch.dtype:
    """The dtype attention and matmuls run in under ``precision``."""
    return _AUTOCAST.get(precision, torch.float32)


def precision_reason(precision: str, device) -> str | None:
    """``None`` if ``precision`` can train on ``device``, else why not."""
    dev = torch.device(device)
    if precision == "tf32" and dev.type != "cuda":
        return "tf32 is a CUDA tensor-core mode; on CPU use fp32 or bf16"
    if precision == "tf32" and torch.cuda.get_device_capability(dev)[0] < 8:
        return "tf32 needs an Ampere or newer GPU (compute capability >= 8.0)"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    available = getattr(torch.amp, "is_autocast_available", lambda _t: True)
    if precision in _AUTOCAST and not available(dev.type):
        return f"torch.autocast is not available on {dev.type}"
    return None


def is_oom(exc: BaseException) -> bool:
    """True for CUDA OOM and for the CPU allocator failing to allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


class CompileFailed(RuntimeError):
    """``torch.compile`` could not compile the forward; the message is the compiler's first line."""


class RecompileError(RuntimeError):
    """The compiled forward recompiled during the timed steps."""


#: Ops whose outputs ``checkpointing: selective`` saves (matmuls and attention kernels); the rest is recomputed.
SAVED_OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
             "_flash_attention_forward", "_efficient_attention_forward")

#: compiled steps timed as the compile time (the first builds the forward and backward graphs)
COMPILE_STEPS = 2
#: eager steps whose median stands for one step of the same model without compile
EAGER_STEPS = 3


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message; torch's "backend='inductor' raised:" takes the next one too."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if first.endswith("raised:") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return first[:400]


@functools.lru_cache(maxsize=1)
def _saved_ops() -> frozenset:
    aten = torch.ops.aten
    return frozenset(getattr(aten, n).default for n in SAVED_OPS if hasattr(aten, n))


def _selective_policy(ctx, func, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if func in _saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _context_fn(selective: bool):
    from torch.utils.checkpoint import create_selective_checkpoint_contexts, noop_context_fn

    return functools.partial(create_selective_checkpoint_contexts, _selective_policy) if selective else noop_context_fn


class CheckpointedBlock(torch.nn.Module):
    """A block whose activations are recomputed in the backward (``torch.utils.checkpoint``, non-reentrant)."""

    def __init__(self, block: torch.nn.Module, selective: bool = False):
        super().__init__()
        self.block, self.selective, self.enabled = block, selective, True

    def forward(self, *args, **kwargs):
        if not (self.enabled and torch.is_grad_enabled()):
            return self.block(*args, **kwargs)
        from torch.utils.checkpoint import checkpoint

        # full: no context_fn at all (torch.compile cannot trace checkpoint's noop_context_fn argument)
        ckpt = {"context_fn": _context_fn(True)} if self.selective else {}
        return checkpoint(self.block, *args, use_reentrant=False, **ckpt, **kwargs)


def _hf_model_class(point: Point):
    """The transformers class ``arch: hf`` builds for ``point`` (without building it), or None."""
    try:
        import transformers

        from txbench.torch_compat import auto_model_class
        from txbench.usermodels import hf_config, hf_task

        config = hf_config(point)
        task = hf_task(point.model.hf["model_type"], config)
        auto = {"seq2seq": transformers.AutoModelForSeq2SeqLM, "masked_lm": transformers.AutoModelForMaskedLM,
                "causal_lm": transformers.AutoModelForCausalLM}[task]
        return auto_model_class(auto, config)
    except Exception:  # unknown here: decided when the model is built
        return None


def lever_reason(point: Point) -> str | None:
    """Why ``point``'s levers (compile, checkpointing, optimizer_impl) cannot run on this machine, or None.

    Decided before launch; what only the built model can tell (a factory without
    blocks) raises :class:`LeverUnsupported` while building.
    """
    dev = torch.device(point.device)
    if point.compile == "reduce-overhead" and dev.type != "cuda":
        return ("compile: reduce-overhead records CUDA graphs, which need a CUDA device; on CPU use default or "
                "max-autotune")
    if point.compile != "none" and not hasattr(torch, "compile"):
        return f"compile: torch {torch.__version__} has no torch.compile"
    if point.checkpointing != "none" and point.model.arch == "hf":
        cls = _hf_model_class(point)
        if cls is not None and not getattr(cls, "supports_gradient_checkpointing", False):
            return f"checkpointing: {cls.__name__} does not support gradient checkpointing"
    impl = point.train.optimizer_impl
    if impl == "fused":
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}.get(point.train.optimizer, torch.optim.AdamW)
        try:
            cls([torch.nn.Parameter(torch.zeros(1, device=dev))], lr=1e-3, fused=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            return f"optimizer_impl: fused {cls.__name__} is not available on {dev.type} here: {_first_line(exc)}"
    return None


def _compile_mode(compile_: str) -> str | None:
    return None if compile_ == "default" else compile_


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The user's block inside txbench's wrappers (a compiled module, a checkpointed block)."""
    while True:
        inner = getattr(module, "_orig_mod", None) or (module.block if isinstance(module, CheckpointedBlock) else None)
        if inner is None:
            return module
        module = inner


def _cache_state(before: dict | None, after: dict | None) -> str | None:
    """``warm`` when inductor's and AOTAutograd's caches held every graph compiled between the two counts, ``cold``
    when none, ``partial`` for some; None when the caches were not consulted (or this torch counts nothing)."""
    if not before or not after:
        return None
    hits, misses = after["cache_hits"] - before["cache_hits"], after["cache_misses"] - before["cache_misses"]
    if hits and misses:
        return "partial"
    return "warm" if hits else "cold" if misses else None


def _rank_of(point: Point) -> tuple[int, int]:
    """This process's rank and the world size for ``point``; a distributed point must run under torchrun."""
    if point.parallel == "none":
        return 0, 1
    from txbench import distributed

    if not distributed.active() or distributed.world() != point.world_size:
        raise RuntimeError(f"parallel {point.parallel} with world_size {point.world_size} runs as {point.world_size} "
                           "ranks under torchrun, which `txbench run` starts; this process is "
                           + (f"one of {distributed.world()} ranks" if distributed.active() else "not one of them"))
    return distributed.rank(), distributed.world()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _make_optimizer(model: torch.nn.Module, point: Point) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer and the implementation that runs: ``fused``, ``foreach`` or ``forloop``."""
    t = point.train
    params = list(model.parameters())
    impl = t.optimizer_impl
    if t.optimizer == "sgd":
        cls, kw = torch.optim.SGD, {"lr": t.lr, "momentum": 0.9, "weight_decay": t.weight_decay}
    else:
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        kw = {"lr": t.lr, "weight_decay": t.weight_decay}
    if impl == "forloop":
        return cls(params, foreach=False, fused=False, **kw), "forloop"
    if impl == "foreach" or (impl == "auto" and t.optimizer == "sgd"):
        return cls(params, foreach=True, **kw), "foreach"
    try:  # fused: one kernel for all parameters
        return cls(params, fused=True, **kw), "fused"
    except (RuntimeError, ValueError, TypeError) as exc:
        if impl == "fused":  # lever_reason rules this out before launch; a parameter dtype can still refuse it
            why = f"optimizer_impl: fused {cls.__name__} refused this model: {_first_line(exc)}"
            raise LeverUnsupported(why) from exc
        # auto: fused where this torch supports it on the device, else foreach
        return cls(params, foreach=True, **kw), "foreach"


class TrainStep:
    """Model, optimizer and a synthetic batch for one point, with the step's phases.

    ``step()`` runs a whole training step; ``fwd()``, ``bwd(loss)`` and ``opt()``
    run its phases for timing. Build it through :func:`txbench.build_step`.
    """

    def __init__(self, point: Point):
        self.point = point
        self.device = torch.device(point.device)
        _set_tf32(point.precision == "tf32")
        self.user = None  # the user's model (arch hf or factory), see txbench.usermodels
        # a distributed point's ranks each take their rows of one global batch (txbench.distributed.shard_batch)
        rank, world = _rank_of(point)
        built = dataclasses.replace(point, batch_size=point.global_batch_size) if world > 1 else point
        if point.model.arch in ("hf", "factory"):
            from txbench.usermodels import build_user_model

            self.user = build_user_model(built, self.device)
            self.model, self.batch = self.user.module, self.user.batch
        else:
            with self.device:  # parameters are created on the device: no host copy of a large model
                self.model = Transformer(point.model, attention=point.attention, seed=point.train.seed)
            self.batch = make_batch(point.model, built.batch_size, point.seq_len, self.device, seed=point.train.seed)
        if world > 1:
            from txbench.distributed import shard_batch

            self.batch = shard_batch(self.batch, rank, world, point.batch_size)
            if self.user is not None:
                self.user.batch = self.batch
        self.model.train()
        # the levers in torchtitan's order: checkpointing per block, compile per block, then DDP/FSDP, and
        # compile of the whole model last (docs/suites.md#levers)
        self._checkpointed = self._apply_checkpointing()
        self.compiled_blocks = self._compile_blocks() if point.compile != "none" and point.compile_scope == "blocks" \
            else []
        self.wrapped = None  # the DistributedDataParallel wrapper the step calls (parallel: ddp)
        self.notes: list[str] = []  # what the record's measure_notes should say about how the step was built
        if point.parallel != "none":
            from txbench.distributed import parallelize

            unused = self._unused_parameters() if point.parallel == "ddp" else []
            if unused:
                self.notes.append(f"DDP with find_unused_parameters=True: {len(unused)} parameter(s) got no gradient "
                                  f"in a probe step ({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''})")
            module = parallelize(self.model, point, self._blocks(), find_unused=bool(unused))
            self.wrapped = module if module is not self.model else None
        self.optimizer, self.optimizer_impl = _make_optimizer(self.model, point)
        self.amp_dtype = _AUTOCAST.get(point.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if point.precision == "fp16" else None
        self.compiled = None  # torch.compile(model) when compile is set with compile_scope model: fwd() runs it
        if point.compile != "none" and point.compile_scope == "model":
            self.compiled = torch.compile(self._base(), mode=_compile_mode(point.compile))
        self._eager = False
        self.lever_values: dict = {}  # compile columns of the record, filled by compile_warmup and timed_steps
        # loss and gradient norm of the first parity_steps steps from the seeded weights and the fixed batch
        self.parity_steps = 0
        self._parity_loss: list = []
        self._parity_grad_norm: list = []
        torch.manual_seed(point.train.seed)  # dropout and any other randomness of the steps start from the seed

    # ------------------------------------------------------------------ levers
    @property
    def is_compiled(self) -> bool:
        """True when ``compile`` is set: the whole model (``compile_scope: model``) or each block is compiled."""
        return self.compiled is not None or bool(self.compiled_blocks)

    def _compile_blocks(self) -> list:
        """``compile_scope: blocks``: each repeated block compiled on its own (PyTorch's regional compilation);
        identical blocks share one compiled graph. Each block is replaced in its ModuleList by its compiled
        module, so DDP/FSDP wrap the compiled block (torchtitan's order)."""
        lists = self._block_lists()
        if not lists:
            raise LeverUnsupported(
                f"compile_scope: blocks: the model ({type(self.model).__name__}) exposes no repeated blocks to compile "
                "one by one; use compile_scope: model, or give a factory model a `blocks` nn.ModuleList")
        out = []
        for blocks in lists:
            for i in range(len(blocks)):
                blocks[i] = torch.compile(blocks[i], mode=_compile_mode(self.point.compile))
                out.append(blocks[i])
        return out

    def _apply_checkpointing(self) -> list:
        """Wrap each block in :class:`CheckpointedBlock` (HF: its own switch); the wrappers, or ["hf"] for HF."""
        mode = self.point.checkpointing
        if mode == "none":
            return []
        selective = mode == "selective"
        if self.point.model.arch == "hf":
            module = self.model
            if not getattr(module, "supports_gradient_checkpointing", False):
                raise LeverUnsupported(f"checkpointing: {type(module).__name__} does not support gradient "
                                       "checkpointing")
            self._hf_ckpt_kwargs = {"use_reentrant": False, **({"context_fn": _context_fn(True)} if selective else {})}
            self._hf_checkpointing(True)
            return ["hf"]
        lists = self._block_lists()
        if lists is None:
            raise LeverUnsupported(
                f"checkpointing: the factory's model ({type(self.model).__name__}) exposes no blocks; give it a "
                "`blocks` attribute, an nn.ModuleList of the blocks to checkpoint (docs/suites.md#levers)")
        wrappers = []
        for blocks in lists:
            for i in range(len(blocks)):
                blocks[i] = CheckpointedBlock(blocks[i], selective)
                wrappers.append(blocks[i])
        return wrappers

    def _hf_checkpointing(self, on: bool) -> None:
        # transformers 5.x names the switch activation_checkpointing_*; older versions gradient_checkpointing_*
        m = self.model
        new = hasattr(m, "activation_checkpointing_enable")
        if new and on:
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=self._hf_ckpt_kwargs)
        elif new:
            m.activation_checkpointing_disable()
        elif on:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=self._hf_ckpt_kwargs)
        else:
            m.gradient_checkpointing_disable()

    @contextlib.contextmanager
    def checkpointing_off(self):
        """Within this context the step keeps every activation (for the FLOP count of the recomputation)."""
        if not self._checkpointed:
            yield
            return
        hf = self._checkpointed == ["hf"]
        if hf:
            self._hf_checkpointing(False)
        else:
            for w in self._checkpointed:
                w.enabled = False
        try:
            yield
        finally:
            if hf:
                self._hf_checkpointing(True)
            else:
                for w in self._checkpointed:
                    w.enabled = True

    @contextlib.contextmanager
    def eager(self):
        """Within this context ``fwd()`` runs the uncompiled model (the FLOP count and the eager reference)."""
        old, self._eager = self._eager, True
        # compiled blocks run their original modules under the force_eager stance
        stance = torch.compiler.set_stance("force_eager") if self.compiled_blocks else contextlib.nullcontext()
        try:
            with stance:
                yield
        finally:
            self._eager = old

    def _unused_parameters(self) -> list[str]:
        """Names of trainable parameters that one forward and backward on this rank's batch leaves without a
        gradient (DDP must know of them); the gradients are dropped again."""
        stance = torch.compiler.set_stance("force_eager") if self.compiled_blocks else contextlib.nullcontext()
        with stance:  # compiling happens in compile_warmup, where it is timed
            loss = self.user.loss(self.model, self.batch) if self.user is not None else self.model(self.batch)
            loss.backward()
        names = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        for p in self.model.parameters():
            p.grad = None
        return names

    @property
    def checkpointed(self) -> bool:
        """True when activation checkpointing is applied to this step's model."""
        return bool(self._checkpointed)

    def _base(self):
        return self.wrapped if self.wrapped is not None else self.model

    def _module(self):
        return self._base() if self.compiled is None or self._eager else self.compiled

    def _block_lists(self) -> list[torch.nn.ModuleList] | None:
        """The ModuleLists of the model's blocks: the reference model's stacks, a factory model's ``blocks``, a
        Hugging Face model's lists of its ``_no_split_modules`` classes (None when it exposes none)."""
        if self.point.model.arch == "hf":
            names = set(getattr(self.model, "_no_split_modules", None) or ())
            lists = [m for m in self.model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)
                     and all(type(_unwrapped(b)).__name__ in names for b in m)]
            return lists or None
        if self.user is not None:
            blocks = getattr(self.model, "blocks", None)
            return [blocks] if isinstance(blocks, torch.nn.ModuleList) else None
        return [self.model.decoder] + ([self.model.encoder] if self.model.encoder is not None else [])

    def _blocks(self) -> list[torch.nn.Module]:
        """The model's repeated blocks (what FSDP shards one by one), as the step calls them (compiled or
        checkpointed wrappers included): :meth:`_block_lists`' entries; a Hugging Face model without such a
        list gives its ``_no_split_modules`` classes; [] when it has none."""
        lists = self._block_lists()
        if lists is None and self.point.model.arch == "hf":
            names = set(getattr(self.model, "_no_split_modules", None) or ())
            return [m for m in self.model.modules() if type(m).__name__ in names]
        return [b for blocks in lists or [] for b in blocks]

    def compile_warmup(self, timer) -> dict:
        """Compile the forward and measure what it costs; ``{}`` when ``compile`` is ``none``.

        Before any step, the eager model's loss on the batch (no grad); then
        :data:`COMPILE_STEPS` compiled steps (or :attr:`parity_steps`, when more),
        the first of which compiles the forward and the backward graph (its loss is
        compared with the eager one, same weights and batch); then
        :data:`EAGER_STEPS` eager steps. Returns ``compile_s`` (the first
        :data:`COMPILE_STEPS` compiled steps minus as many eager steps at their
        median: the compile time, as PyTorch's dynamo benchmarks measure it),
        ``graph_breaks``, ``compile_loss_rel_diff`` and ``compile_cache`` (whether
        inductor's caches held the graphs: ``warm``, ``cold`` or ``partial``).
        Raises :class:`CompileFailed` with the compiler's first line.
        """
        if not self.is_compiled:
            return {}
        with torch.no_grad(), self.eager():
            eager_loss = float(self.fwd())
        before = dynamo_counts()
        t0 = time.perf_counter()
        try:
            loss = self.fwd()
            compiled_loss = float(loss.detach())
            self.bwd(loss)
            del loss
            self.opt()
            _sync(self.device)
        except Exception as exc:
            if is_oom(exc):
                raise
            raise CompileFailed(f"torch.compile (mode {self.point.compile}) failed: {type(exc).__name__}: "
                                f"{_first_line(exc)}") from exc
        first_s = time.perf_counter() - t0
        after = dynamo_counts()
        compiled_s = first_s + sum(sum(timer(self)) for _ in range(COMPILE_STEPS - 1)) / 1e3
        for _ in range(self.parity_steps - COMPILE_STEPS):  # the loss trajectory is the compiled steps' own
            timer(self)
        with self.eager():
            eager_ms = sorted(sum(timer(self)) for _ in range(EAGER_STEPS))
        rel = abs(compiled_loss - eager_loss) / max(abs(eager_loss), 1e-12)
        tol = LOSS_TOLERANCE.get(self.point.precision, 1e-3)
        if not rel <= tol:
            raise CompileFailed(f"torch.compile (mode {self.point.compile}) changed the loss: compiled "
                                f"{compiled_loss:.6g} vs eager {eager_loss:.6g} (relative difference {rel:.2g} > "
                                f"{tol:g})")
        self._frames_after_compile = after["frames"] if after else None
        self.lever_values = {
            "compile_s": compiled_s - COMPILE_STEPS * eager_ms[len(eager_ms) // 2] / 1e3,
            "graph_breaks": after["breaks"] - before["breaks"] if after and before else None,
            "compile_loss_rel_diff": rel,
            "compile_cache": _cache_state(before, after),
        }
        return dict(self.lever_values)

    @contextlib.contextmanager
    def timed_steps(self):
        """Around the timed steps: a compiled forward that would recompile raises :class:`RecompileError`.

        On entering, ``lever_values["recompiles"]`` is set to the frames dynamo
        compiled again after the first compiled step (during the warmup).
        """
        self.parity_steps = len(self._parity_loss)  # the trajectory ends where the timed steps begin
        if not self.is_compiled:
            yield
            return
        now = dynamo_counts()
        if now is not None and getattr(self, "_frames_after_compile", None) is not None:
            self.lever_values["recompiles"] = now["frames"] - self._frames_after_compile
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                yield
        except RuntimeError as exc:
            text = str(exc)
            if isinstance(exc, RecompileError) or not ("fail_on_recompile" in text or "Detected recompile" in text):
                raise
            guards = [ln.strip(" -") for ln in text.splitlines() if ln.strip().startswith("- ")]
            why = guards[0] if guards else _first_line(exc)
            raise RecompileError(f"the compiled forward recompiled during the timed steps ({why}): the timings "
                                 "would mix code versions; keep shapes fixed after the warmup") from exc

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _backend(self):
        # the reference model forces its SDPA backend itself; any other model gets it around the step
        return sdpa_context(self.point.attention) if self.user is not None else contextlib.nullcontext()

    def fwd(self) -> torch.Tensor:
        module = self._module()
        if self.is_compiled and not self._eager and self.point.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new step may overwrite the last outputs
        with self._autocast(), self._backend():
            if self.user is not None:
                return self.user.loss(module, self.batch)
            return module(self.batch)

    def bwd(self, loss: torch.Tensor) -> None:
        if len(self._parity_loss) < self.parity_steps:
            self._parity_loss.append(loss.detach().float())
        with self._backend():
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()

    def opt(self) -> None:
        if len(self._parity_grad_norm) < min(self.parity_steps, len(self._parity_loss)):
            self._parity_grad_norm.append(self._grad_norm())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> torch.Tensor:
        """One full training step; returns the loss tensor (not synchronized: reading it waits for the device)."""
        loss = self.fwd()
        self.bwd(loss)
        self.opt()
        return loss

    __call__ = step

    # ------------------------------------------------------------------ loss parity
    def record_parity(self, steps: int) -> None:
        """Record the loss and the gradient norm of the next ``steps`` steps (the first ones: call it before any)."""
        self.parity_steps = steps

    def _grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradients, unscaled (fp16), whole under FSDP (its shards' norms combined)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # the step then skips its own unscale
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        norm = torch.nn.utils.get_total_norm(grads)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    @property
    def parity_done(self) -> bool:
        """True once the steps :meth:`record_parity` asked for have run."""
        return len(self._parity_grad_norm) >= self.parity_steps

    def parity(self) -> tuple[list[float], list[float]]:
        """The recorded (losses, gradient norms) as floats; a distributed step's loss is the mean over ranks."""
        from txbench import distributed

        losses = [float(x) for x in self._parity_loss]
        norms = [float(x) for x in self._parity_grad_norm]
        if distributed.active():
            losses = [distributed.mean_over_ranks(x) for x in losses]
        return losses, norms

    def static_bytes(self) -> dict[str, int]:
        """Bytes of parameters, gradients (fp32, one per parameter) and optimizer state."""
        from txbench.distributed import local_numel  # this rank's shard under FSDP

        pbytes = sum(local_numel(p) * p.element_size() for p in self.model.parameters())
        gbytes = sum(local_numel(p) * p.element_size() for p in self.model.parameters() if p.requires_grad)
        obytes = 0
        for state in self.optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    obytes += local_numel(v) * v.element_size()
        return {"param_bytes": pbytes, "grad_bytes": gbytes, "optimizer_state_bytes": obytes}
