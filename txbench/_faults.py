"""Private: test-only fault injection, driven by the ``TXBENCH_FAULT`` environment variable.

txbench's own tests and the regression-gate benchmark use it to prove that
failures are recorded (a point that raises, hangs, or kills its worker) and that
``txbench compare`` catches planted slowdowns and memory growth. It does
nothing unless the variable is set: :func:`fault_for` then returns None. The worker
and the pytest plugin pass the rule to the measurement as its ``hooks``
(:class:`txbench.pipeline.stages.Hooks`); the measurement never imports this module.
Format: a JSON list of rules, e.g.::

    TXBENCH_FAULT='[{"match": {"seq_len": 64}, "action": "raise"}]'
    TXBENCH_FAULT='[{"action": "slow", "value": 0.10}]'   # every point 10% slower

``match`` selects points by config fields (all must be equal; empty matches all);
``rank`` (optional) limits the rule to that rank of a distributed point.
Actions: ``raise`` (RuntimeError), ``hang`` (sleeps forever), ``exit``
(``os._exit(3)``), ``segv`` (SIGSEGV to itself), ``oom`` (an allocator
out-of-memory error during the build), ``slow`` (busy work of ``value`` x the
step time inside the optimizer phase), ``mem`` (an extra buffer of ``value`` x
the step's activation memory, live from forward to the optimizer step).
"""

from __future__ import annotations

import json
import os
import signal
import time

__all__ = ["ENV_VAR", "fault_for", "Fault"]  # private module: txbench's own tests and benchmarks only

ENV_VAR = "TXBENCH_FAULT"


class Fault:
    """The hooks of one ``TXBENCH_FAULT`` rule; each acts only for its own action."""

    def __init__(self, action: str, value: float = 0.0):
        self.action, self.value = action, float(value)

    def before_build(self) -> None:
        if self.action == "raise":
            raise RuntimeError("txbench test fault: raise")
        if self.action == "hang":
            while True:
                time.sleep(3600)
        if self.action == "exit":
            os._exit(3)
        if self.action == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)

    def install(self, step) -> None:
        if self.action == "oom":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: txbench test fault")

    def after_warmup(self, step, timer) -> None:
        """Called after warmup: size the planted work from the real step."""
        if self.action == "slow":
            base = sorted(sum(timer(step)) for _ in range(21))[10] / 1e3  # median of 21 steps: noise averages out
            extra = self.value * base
            inner = step.opt

            def slow_opt():
                inner()
                t_end = time.perf_counter() + extra
                while time.perf_counter() < t_end:
                    pass

            step.opt = slow_opt
        elif self.action == "mem":
            import torch

            from txbench.measure.memory import cpu_step_peak_bytes

            if step.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(step.device)
                step.step()
                peak = torch.cuda.max_memory_allocated(step.device)
            else:
                peak = cpu_step_peak_bytes(step)
            s = step.static_bytes()
            activation = max(peak - s["param_bytes"] - s["grad_bytes"] - s["optimizer_state_bytes"], 0)
            n = max(int(self.value * activation) // 4, 1)
            inner_fwd, inner_opt = step.fwd, step.opt

            def fwd():
                self.buf = torch.ones(n, device=step.device)  # held by the rule, not the step
                return inner_fwd()

            def opt():
                inner_opt()
                self.buf = None

            step.fwd, step.opt = fwd, opt


def fault_for(point) -> Fault | None:
    """The fault rule matching ``point``, or None (always None unless ``TXBENCH_FAULT`` is set)."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return None
    rules = json.loads(spec)
    cfg = point.to_dict()
    for rule in rules if isinstance(rules, list) else [rules]:
        match = rule.get("match", {})
        if "rank" in rule and rule["rank"] != int(os.environ.get("RANK", "0")):
            continue  # a rule for one rank of a distributed point
        if all(cfg.get(k) == v for k, v in match.items()):
            return Fault(rule["action"], rule.get("value", 0.0))
    return None
