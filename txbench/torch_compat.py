"""The one place where txbench touches private torch APIs.

txbench supports any ``torch>=2.4``, but three of its measurements read
internals that torch does not promise to keep: the profiler pass reads kineto's
raw events (``prof.profiler.kineto_results.events()``), an order of magnitude
cheaper than torch's ``FunctionEvent`` objects, the CPU memory measurement
reads the allocation events of ``experimental_event_tree()``, and the FLOP
count hands ``FlopCounterMode`` formulas that see the op's tensors (the
``_get_raw`` attribute of a ``custom_mapping`` formula). Keeping those calls
here means a torch upgrade that moves them breaks one module, never a point.

Each capability is one function. It tries the private API first (so results
stay what they have always been where it works), falls back to a public API
that carries the same information (where torch has one: the FLOP count has
none), and where neither works raises :class:`TorchUnsupported`. Callers turn that into a note in the record's
``measure_notes`` column and keep the rest of the point (its timing, its
status ``ok``). torch is imported inside the functions, so importing this
module (as ``txbench.profile`` does) does not import torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from decimal import Decimal

__all__ = ["TorchUnsupported", "kineto_events", "allocation_events", "dynamo_counts", "fresh_compile_cache",
           "auto_model_class", "flop_counter_mode", "memory_timeline", "MEMORY_CATEGORIES", "fake_memory_tracker",
           "cuda_memory_snapshot"]

# What txbench.profile reads from each kineto event; a torch that drops one of these has changed the API.
_KINETO_METHODS = ("name", "device_type", "start_ns", "end_ns", "start_thread_id", "end_thread_id",
                   "sequence_nr", "fwd_thread_id", "correlation_id", "linked_correlation_id", "nbytes",
                   "is_async")
_MEMORY = "[memory]"


class TorchUnsupported(Exception):
    """The installed torch lacks what a measurement needs, privately and publicly.

    ``measurement`` names what could not be measured (``"the profiler pass"``),
    ``missing`` what failed. The message is written to be stored as is in
    ``Record.measure_notes``.
    """

    def __init__(self, measurement: str, missing: str):
        self.measurement, self.missing = measurement, missing
        # "; " is left to Record.measure_notes, which joins several notes with it
        super().__init__(f"this torch version ({_torch_version()}) is not supported by {measurement}, "
                         f"the rest of the point is kept: {missing.replace('; ', ', ')}")


def _torch_version() -> str:
    try:
        import torch

        return str(torch.__version__)
    except Exception:  # the message must never hide the failure it reports
        return "unknown"


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- profiler pass: raw events


class _Event:
    """A kineto event rebuilt from a public ``FunctionEvent``: the methods ``txbench.profile`` reads."""

    __slots__ = ("_name", "_dtype", "_start", "_end", "_thread", "_seq", "_fwd", "_corr", "_linked", "_nbytes",
                 "_async", "_annotation")

    def __init__(self, name, dtype, start, end, thread, *, seq=-1, fwd=0, corr=0, linked=0, nbytes=0,
                 is_async=False, annotation=False):
        self._name, self._dtype, self._start, self._end, self._thread = name, dtype, start, end, thread
        self._seq, self._fwd, self._corr, self._linked, self._nbytes = seq, fwd, corr, linked, nbytes
        self._async, self._annotation = is_async, annotation

    def name(self): return self._name
    def device_type(self): return self._dtype
    def start_ns(self): return self._start
    def end_ns(self): return self._end
    def start_thread_id(self): return self._thread
    def end_thread_id(self): return self._thread  # FunctionEvent folds a thread change into is_async
    def sequence_nr(self): return self._seq
    def fwd_thread_id(self): return self._fwd
    def correlation_id(self): return self._corr
    def linked_correlation_id(self): return self._linked
    def nbytes(self): return self._nbytes
    def is_async(self): return self._async
    def is_hidden_event(self): return False  # torch drops hidden events before building FunctionEvents
    def is_user_annotation(self): return self._annotation


def _private_kineto_events(prof) -> list:
    events = prof.profiler.kineto_results.events()
    if events:
        missing = [m for m in _KINETO_METHODS if not callable(getattr(events[0], m, None))]
        if missing:
            raise AttributeError(f"kineto events have no {', '.join(missing)}")
    return events


def _ns(us: float) -> int:
    # FunctionEvent times are kineto's nanoseconds / 1000 as floats; rounding gives the nanoseconds back
    return round(us * 1000)


def _free_instant(fe, start: int, end: int) -> int:
    """An instant inside ``fe`` and outside its children, so txbench's call tree books memory there to ``fe``."""
    t = start
    for cs, ce in sorted((_ns(c.time_range.start), _ns(c.time_range.end)) for c in fe.cpu_children):
        if cs > t:
            break
        t = max(t, ce + 1)
    return t if t <= end else start


def _public_kineto_events(prof) -> list[_Event]:
    from torch.autograd import DeviceType

    out = []
    for fe in prof.events():
        start, end = _ns(fe.time_range.start), _ns(fe.time_range.end)
        dtype, thread = fe.device_type, fe.thread
        cpu_mem, dev_mem = fe.cpu_memory_usage, getattr(fe, "device_memory_usage", 0) or 0
        if fe.name == _MEMORY:  # an allocation outside every op: torch keeps it as an event of its own
            out += [_Event(_MEMORY, d, start, start, thread, nbytes=n)
                    for d, n in ((DeviceType.CPU, cpu_mem), (DeviceType.CUDA, dev_mem)) if n]
            continue
        out.append(_Event(getattr(fe, "trace_name", None) or fe.name, dtype, start, end, thread,
                          seq=fe.sequence_nr, fwd=fe.fwd_thread or 0, corr=fe.id,
                          linked=getattr(fe, "linked_correlation_id", 0) or 0, is_async=fe.is_async,
                          annotation=bool(getattr(fe, "is_user_annotation", False))))
        if dtype != DeviceType.CPU or fe.is_async:
            continue
        # FunctionEvent only has each op's inclusive memory; its own share becomes one memory event
        # placed where txbench's call tree gives it to this op and not to one of its children
        kids = fe.cpu_children
        self_cpu = cpu_mem - sum(c.cpu_memory_usage for c in kids)
        self_dev = dev_mem - sum(getattr(c, "device_memory_usage", 0) or 0 for c in kids)
        if self_cpu or self_dev:
            t = _free_instant(fe, start, end)
            out += [_Event(_MEMORY, d, t, t, thread, nbytes=n)
                    for d, n in ((DeviceType.CPU, self_cpu), (DeviceType.CUDA, self_dev)) if n]
    return out


def kineto_events(prof) -> list:
    """The raw events of a finished ``torch.profiler.profile`` ``prof``, as kineto events.

    Private path: ``prof.profiler.kineto_results.events()``, returned as is.
    Public fallback: ``prof.events()`` (``FunctionEvent`` objects), rebuilt into
    objects with the same methods; times are then relative to the trace start
    and each op's own memory is one event inside it (torch keeps only per-op
    sums), which gives the same op rows as the private path except where
    torch merged an op into a parent of the same name (fewer ``calls``, same
    self time). Raises :class:`TorchUnsupported` when neither works.
    """
    return _first_that_works(prof, _private_kineto_events, _public_kineto_events, "the profiler pass",
                             "prof.profiler.kineto_results.events() failed ({private}) and so did prof.events() "
                             "({public})")


def _first_that_works(prof, private_fn, public_fn, measurement: str, missing: str):
    """``private_fn(prof)``, else ``public_fn(prof)``, else :class:`TorchUnsupported` naming both failures."""
    try:
        return private_fn(prof)
    except Exception as exc:  # any failure of a private API means it changed; the public path decides
        private = _why(exc)
    try:
        return public_fn(prof)
    except Exception as exc:
        public = _why(exc)
    raise TorchUnsupported(measurement, missing.format(private=private, public=public))


# ----------------------------------------------------------------------------- CPU memory: allocation events


def _private_allocation_events(prof) -> list[tuple[int, int]]:
    import torch

    allocation = torch._C._profiler._EventType.Allocation
    sizes = []

    def walk(node):
        if node.tag == allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    return sizes


def _trace_ns(ts, base: int) -> int:
    # the trace writes microseconds with three decimals: Decimal keeps the nanoseconds a float would round
    return int(Decimal(ts) * 1000) + base


def _public_allocation_events(prof) -> list[tuple[int, int]]:
    with tempfile.TemporaryDirectory(prefix="txbench-mem-") as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            trace = json.load(f, parse_float=str)
    base = int(trace.get("baseTimeNanoseconds", 0) or 0)
    sizes = [(_trace_ns(e["ts"], base), int(e["args"]["Bytes"]))
             for e in trace.get("traceEvents", ()) if e.get("name") == _MEMORY]
    if not sizes:
        raise LookupError("the Chrome trace holds no [memory] events")
    return sizes


def allocation_events(prof) -> list[tuple[int, int]]:
    """``(time_ns, bytes)`` of every allocation (positive) and free (negative) seen by ``prof``.

    ``prof`` is a finished ``torch.profiler.profile`` run with
    ``profile_memory=True``. Private path: the ``Allocation`` nodes of
    ``prof.profiler.kineto_results.experimental_event_tree()``, in tree order.
    Public fallback: the ``[memory]`` events of ``prof.export_chrome_trace``
    (the same events, in trace order, with the same times). Only the order of
    the times is meaningful. Raises :class:`TorchUnsupported` when neither works.
    """
    return _first_that_works(prof, _private_allocation_events, _public_allocation_events,
                             "the CPU memory measurement",
                             "the allocation events of experimental_event_tree() failed ({private}) and so did the "
                             "[memory] events of prof.export_chrome_trace() ({public})")


#: The memory profiler's categories, as txbench names them (torch.profiler._memory_profiler.Category; None: "other").
MEMORY_CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "temporaries", "inputs",
                     "autograd_detail", "other")
_CATEGORY_NAMES = {"PARAMETER": "parameters", "GRADIENT": "gradients", "OPTIMIZER_STATE": "optimizer_state",
                   "ACTIVATION": "activations", "TEMPORARY": "temporaries", "INPUT": "inputs",
                   "AUTOGRAD_DETAIL": "autograd_detail"}


def _category(categories, key, version, tensor_key) -> str:
    cat = categories.get(key, version) if isinstance(key, tensor_key) else None
    return _CATEGORY_NAMES.get(cat.name, "other") if cat is not None else "other"


def memory_timeline(prof, device: str) -> tuple[list[int], dict[str, list[int]]]:
    """Live bytes by category over a profiled run on ``device``: ``(times_ns, {category: bytes at each time})``.

    ``prof`` is a finished ``torch.profiler.profile`` run with ``profile_memory``, ``record_shapes`` and
    ``with_stack``. Private path only (``torch.profiler._memory_profiler``: its ``MemoryProfile`` assigns
    every tensor version a category from the autograd graph and the optimizer's state; torch has no public
    API for this). Tensors alive before the run count from its start. Categories are
    :data:`MEMORY_CATEGORIES`; times share the clock of :func:`kineto_events`. Raises
    :class:`TorchUnsupported` when this torch has no such profiler.
    """
    try:
        import torch
        from torch.profiler._memory_profiler import Action, TensorKey

        mem = prof._memory_profile()
        categories = mem._categories
        dev = torch.device(device)
        times: list[int] = []
        rows: list[dict[str, int]] = []
        t_min = None
        for t, action, (key, version), nbytes in mem.timeline:
            if key.device != dev:
                continue
            if t != -1 and (t_min is None or t < t_min):
                t_min = t
            if not times or t != times[-1]:
                times.append(t)
                rows.append(dict(rows[-1]) if rows else dict.fromkeys(MEMORY_CATEGORIES, 0))

            row = rows[-1]
            if action in (Action.PREEXISTING, Action.CREATE):
                row[_category(categories, key, version, TensorKey)] += int(nbytes)
            elif action == Action.INCREMENT_VERSION:
                row[_category(categories, key, version, TensorKey)] -= int(nbytes)
                row[_category(categories, key, version + 1, TensorKey)] += int(nbytes)
            elif action == Action.DESTROY:
                row[_category(categories, key, version, TensorKey)] -= int(nbytes)
    except Exception as exc:  # a private API that moved: the breakdown is lost, never the point
        raise TorchUnsupported("the memory breakdown by category",
                               f"torch.profiler._memory_profiler failed ({_why(exc)})") from exc
    times = [t_min if t == -1 and t_min is not None else t for t in times]
    return times, {c: [r[c] for r in rows] for c in MEMORY_CATEGORIES}


def cuda_memory_snapshot(rerun, path: str, max_entries: int = 100_000) -> bool:
    """Run ``rerun`` (expected to run out of CUDA memory again) with the caching allocator's history on, and
    write its snapshot (``torch.cuda.memory._dump_snapshot``: every segment and block, and the last
    ``max_entries`` allocation events with their stacks; open it at https://pytorch.org/memory_viz) to ``path``.
    True when ``rerun`` ran out of memory and the snapshot was written; :class:`TorchUnsupported` when this torch
    lacks the (private) API."""
    import torch

    mem = getattr(torch.cuda, "memory", None)
    record, dump = getattr(mem, "_record_memory_history", None), getattr(mem, "_dump_snapshot", None)
    if record is None or dump is None:
        raise TorchUnsupported("the memory snapshot on OOM", "torch.cuda.memory._record_memory_history")
    record(max_entries=max_entries)
    try:
        try:
            rerun()
        except Exception as exc:
            if "out of memory" not in str(exc).lower():
                raise
            dump(path)
            return True
        return False
    finally:
        record(enabled=None)


def fake_memory_tracker():
    """``torch.distributed._tools.mem_tracker.MemTracker`` (live bytes by category and module under a fake or
    real tensor mode), or :class:`TorchUnsupported` when this torch lacks it (private module)."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception as exc:
        raise TorchUnsupported("the memory estimate", f"torch.distributed._tools.mem_tracker ({_why(exc)})") from exc
    return MemTracker()


def dynamo_counts() -> dict | None:
    """Frames dynamo compiled and graph breaks it took so far in this process (None if this torch has no counters).

    torch exposes these only through ``torch._dynamo.utils.counters``; a torch without them costs the
    ``graph_breaks`` and ``recompiles`` columns, never the point.
    """
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    try:
        return {"frames": int(counters["frames"].get("ok", 0)), "breaks": int(sum(counters["graph_break"].values())),
                "cache_hits": int(counters["inductor"].get("fxgraph_cache_hit", 0)
                                  + counters["aot_autograd"].get("autograd_cache_hit", 0)),
                "cache_misses": int(counters["inductor"].get("fxgraph_cache_miss", 0)
                                    + counters["aot_autograd"].get("autograd_cache_miss", 0))}
    except (KeyError, TypeError, AttributeError):
        return None


@contextlib.contextmanager
def fresh_compile_cache():
    """Within this context torch.compile starts cold: a new, empty inductor cache directory (deleted after) and
    the in-memory caches cleared (``torch._inductor.utils.fresh_cache``; ``fresh_inductor_cache`` before torch
    2.8), and dynamo's compiled frames dropped. Raises :class:`TorchUnsupported` when this torch has neither."""
    import torch._dynamo
    import torch._inductor.utils as inductor_utils

    fresh = getattr(inductor_utils, "fresh_cache", None) or getattr(inductor_utils, "fresh_inductor_cache", None)
    if fresh is None:
        raise TorchUnsupported("measure.compile_cache: cold needs torch._inductor.utils.fresh_cache (torch >= 2.1)")
    torch._dynamo.reset()
    with fresh():
        yield
    torch._dynamo.reset()


def auto_model_class(auto, config):
    """The class a transformers ``AutoModelFor...`` would build for ``config``, without building it (or None).

    transformers keeps the mapping in the private ``_model_mapping``; where it moved, the answer is None and
    the caller decides when the model is built.
    """
    mapping = getattr(auto, "_model_mapping", None)
    try:
        return mapping[type(config)] if mapping is not None else None
    except (KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- FLOP count: formulas on tensors


def flop_counter_mode(raw_formulas: dict):
    """A ``FlopCounterMode(display=False)`` in which ``raw_formulas`` (op -> formula) replace the registry's formulas.

    Each formula is called as torch calls a registry entry, ``formula(*args, out_val=..., **kwargs)`` with the op's
    arguments as they are (tensors, flags), not their shapes, so it can look at the tensors and call the registry's
    own entry for the op with the same arguments.

    Private path: the formula's ``_get_raw`` attribute, which tells ``FlopCounterMode(custom_mapping=...)`` not to
    wrap it in ``shape_wrapper``. No public fallback: the public ``register_flop_formula(op, get_raw=True)``
    registers for every FlopCounterMode in the process and refuses an op that already has a formula, which every op
    here has. Raises :class:`TorchUnsupported` when this torch's mode did not keep the formulas as given.
    """
    from torch.utils.flop_counter import FlopCounterMode

    for formula in raw_formulas.values():
        formula._get_raw = True
    try:
        counter = FlopCounterMode(display=False, custom_mapping=raw_formulas)
    except Exception as exc:
        raise TorchUnsupported("the FLOP count", f"FlopCounterMode(custom_mapping=...) failed ({_why(exc)})") from None
    registry = getattr(counter, "flop_registry", None)
    if registry is not None and any(registry.get(op) is not f for op, f in raw_formulas.items()):
        raise TorchUnsupported("the FLOP count", "FlopCounterMode wrapped formulas marked _get_raw")
    return counter
