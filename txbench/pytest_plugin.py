"""pytest plugin: ``pytest --txbench-suite suites/ci.yaml`` benchmarks every point with pytest-benchmark.

Each point of the suite becomes a test ``suites/ci.yaml::step[T64-naive]`` that
builds the point's training step, warms it up (the suite's ``measure.warmup_*``),
and times whole steps with pytest-benchmark's ``benchmark.pedantic`` (one step
per round; on CUDA the timed function synchronizes, so the host clock sees the
GPU work). The number of rounds follows the suite's measure section:
``max_s`` / (one step's time), clamped to [``min_steps``, ``max_steps``].
``--benchmark-autosave``, ``--benchmark-compare`` and
``--benchmark-compare-fail=median:10%`` then work as with any pytest-benchmark
test; ``extra_info`` carries the point config, ``tokens_per_step``,
``flops_per_step`` and the measured ``tokens_per_s``.

Without ``--txbench-suite`` the plugin only registers its options: nothing is
collected and torch is not imported. With it and no test paths on the command
line, the session runs only the suite's benchmarks; name paths to run them too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

__all__ = ["SuiteFile"]

_SUITE_KEY = pytest.StashKey[Path]()


def pytest_addoption(parser):
    group = parser.getgroup("txbench", "txbench training-step benchmarks")
    group.addoption(
        "--txbench-suite",
        action="store",
        metavar="PATH",
        default=None,
        help="Benchmark every point of this txbench suite YAML with pytest-benchmark (e.g. suites/ci.yaml).",
    )
    group.addoption(
        "--txbench-set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="Override a suite field, as txbench run --set (e.g. measure.max_s=1). Repeatable.",
    )


def pytest_configure(config):
    path = config.getoption("txbench_suite", None)
    if not path:
        return  # inert: users who merely installed txbench see no change
    if not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("--txbench-suite needs pytest-benchmark: pip install pytest-benchmark")
    suite = Path(path)
    if not suite.is_absolute():
        suite = config.invocation_params.dir / suite
    if not suite.is_file():
        raise pytest.UsageError(f"--txbench-suite {path}: no such file")
    suite = suite.resolve()
    config.stash[_SUITE_KEY] = suite
    config.addinivalue_line("markers", "txbench: a training-step benchmark generated from a txbench suite")
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.append(str(suite))
    else:
        # no paths given: run the suite's benchmarks only, not the project's whole test suite
        config.args[:] = [str(suite)]


def pytest_collect_file(file_path, parent):
    suite = parent.config.stash.get(_SUITE_KEY, None)
    if suite is not None and file_path.resolve() == suite:
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """A suite YAML collected as one benchmark test per point."""

    def collect(self):
        import pandas as pd

        from txbench.errors import TxbenchError
        from txbench.export.pytest_benchmark import benchmark_ids
        from txbench.fields import CONFIG_COLUMNS, varying_columns
        from txbench.labels import short_labels
        from txbench.suite import load_suite

        try:
            suite, _ = load_suite(self.path, self.config.getoption("txbench_set") or None)
        except TxbenchError as e:
            raise self.CollectError(str(e)) from None
        device = suite.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        points = suite.points(device)
        if not points:
            return
        configs = pd.DataFrame([{**p.to_dict(), "point_id": p.point_id} for p in points])
        varying = varying_columns(configs, CONFIG_COLUMNS)
        measure = suite.measure_config()
        for point, bid, label, (_, row) in zip(
            points, benchmark_ids(configs), short_labels(configs), configs.iterrows()
        ):
            params = {c: _plain(row[c]) for c in varying}
            fn = _make_test(point, measure, label=label, param=bid, params=params, group=suite.name)
            item = pytest.Function.from_parent(self, name=f"step[{bid}]", callobj=fn)
            item.add_marker(pytest.mark.txbench)
            yield item


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _make_test(point, measure, *, label, param, params, group):
    def txbench_step(benchmark):
        run_point_benchmark(benchmark, point, measure, label=label, param=param, params=params, group=group)

    txbench_step.__doc__ = f"txbench training step: {point.label()}"
    return txbench_step


def run_point_benchmark(benchmark, point, measure, *, label: str, param: str, params: dict, group: str) -> None:
    """Time ``point``'s training step with pytest-benchmark's ``benchmark`` fixture (pedantic mode).

    The point goes through txbench's own stages (:mod:`txbench.pipeline.stages`): the same
    build, warmup and FLOP count as ``txbench run``, for every model kind; only the timing
    is pytest-benchmark's.
    """
    import torch

    from txbench._faults import fault_for
    from txbench.export.pytest_benchmark import point_extra_info
    from txbench.pipeline import stages, unsupported_reason

    reason = unsupported_reason(point)
    if reason:
        pytest.skip(f"unsupported: {reason}")
    hooks = fault_for(point) or stages.NO_HOOKS  # None unless TXBENCH_FAULT is set (txbench's own tests)
    built = stages.build(point, hooks)
    step, device = built.step, built.step.device
    warm = stages.warmup(step, built.timer, measure)
    hooks.after_warmup(step, built.timer)

    def one_step():
        step.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the host clock must see the GPU work

    t0 = time.perf_counter()
    one_step()
    est_s = max(time.perf_counter() - t0, 1e-6)
    rounds = int(min(max(measure.max_s / est_s, measure.min_steps), measure.max_steps))

    benchmark.group = group
    benchmark.param = param
    benchmark.params = params or None
    benchmark.extra_info.update(point_extra_info(point.to_dict(), point.point_id, label))
    benchmark.pedantic(one_step, rounds=rounds, iterations=1, warmup_rounds=0)
    flops = stages.count_flops(step, point)  # after the timing: the count runs a step of its own
    benchmark.extra_info.update(
        flops_per_step=flops.flops_per_step,
        attn_flops_per_step=flops.attn_flops_per_step,
        flops_check_note=flops.flops_check_note,
        warmup_steps=warm.warmup_steps,
        torch_threads=torch.get_num_threads(),
        timer="perf_counter" + ("+cuda_synchronize" if device.type == "cuda" else ""),
    )
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None):
        median_s = stats.stats.median
        benchmark.extra_info["tokens_per_s"] = point.tokens_per_step / median_s
        if flops.flops_per_step:
            benchmark.extra_info["tflops_per_s"] = flops.flops_per_step / median_s / 1e12
