"""The levers: torch.compile, activation checkpointing, the optimizer implementation, and "what to try next"."""

from __future__ import annotations

import json
import textwrap
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from txbench.analysis.levers import lever_effects, suggestions, what_to_try
from txbench.cli.app import app
from txbench.config import MeasureConfig, ModelConfig, Point, TrainConfig, validate_point
from txbench.errors import PointError
from txbench.measure.flop_formulas import count_step_flops
from txbench.measure.flops import recompute_flops
from txbench.model import make_batch
from txbench.pipeline import build_step, measure_point, measure_point_keep, unsupported_reason
from txbench.record import Record
from txbench.report.html import render_report
from txbench.step import CompileFailed, RecompileError
from txbench.store import POINTS_FILE, write_points

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128, max_seq_len=1024)
MID = ModelConfig(d_model=64, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=1024)
QUICK = MeasureConfig(warmup_s=0, warmup_min_steps=2, min_steps=3, max_steps=4, max_s=1, profile_steps=0)


# ---------------------------------------------------------------- compile (one compiled point, several asserts)
@pytest.fixture(scope="module")
def compiled():
    record, step = measure_point_keep(Point(seq_len=32, batch_size=2, model=TINY, compile="default"), QUICK)
    yield record, step
    del step


def test_a_compiled_point_records_its_compile_time_and_agrees_with_eager(compiled):
    rec, step = compiled
    assert rec.status == "ok", rec.error
    assert rec.compile_s > 0  # the first compiled steps compile the forward and backward graphs
    assert rec.compile_loss_rel_diff is not None and rec.compile_loss_rel_diff <= 1e-4
    assert rec.recompiles == 0 and rec.graph_breaks == 0
    assert step.compiled is not None and rec.n_steps >= QUICK.min_steps
    row = rec.to_dict()
    assert row["compile"] == "default" and row["compile_s"] == rec.compile_s
    # FLOPs are counted through the eager model, so the cross-check still holds
    assert "agree within 1%" in rec.flops_check_note


def test_a_shape_change_after_warmup_is_a_recompile_error_not_a_mixed_timing(compiled):
    _, step = compiled
    step.batch = make_batch(TINY, 2, 16, "cpu")
    with pytest.raises(RecompileError, match="recompiled during the timed steps .*size mismatch"):
        with step.timed_steps():
            step()


def test_a_compile_failure_is_the_points_error_with_the_compilers_first_line(monkeypatch):
    def broken(model, mode=None):
        def run(*args, **kwargs):
            raise RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error\nlong log ...")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    point = Point(seq_len=16, batch_size=2, model=TINY, compile="max-autotune")
    with pytest.raises(CompileFailed) as err:  # the worker records it as the point's error and the sweep goes on
        measure_point(point, QUICK)
    assert str(err.value) == ("torch.compile (mode max-autotune) failed: RuntimeError: backend='inductor' raised: "
                              "CppCompileError: C++ compile error")


def test_levers_that_cannot_work_are_unsupported_or_invalid_before_launch():
    assert "CUDA" in unsupported_reason(Point(seq_len=16, model=TINY, compile="reduce-overhead"))
    assert unsupported_reason(Point(seq_len=16, model=TINY, compile="max-autotune")) is None
    for field, value in (("compile", "fast"), ("checkpointing", "some")):
        with pytest.raises(PointError) as err:
            validate_point(Point.from_dict({**Point().to_dict(), field: value}))
        assert any(f == field and "allowed" in m for f, m in err.value.problems)
    with pytest.raises(PointError):
        validate_point(Point(train=TrainConfig(optimizer_impl="jit")))


def test_lever_fields_at_their_default_keep_the_point_id():
    base = Point(seq_len=128, attention="naive")
    assert Point(seq_len=128, attention="naive", compile="none", checkpointing="none",
                 train=TrainConfig(optimizer_impl="auto")).point_id == base.point_id
    assert Point(seq_len=128, attention="naive", compile="default").point_id != base.point_id


# ---------------------------------------------------------------- checkpointing
def _grads(point: Point) -> dict:
    step = build_step(point)
    loss = step.fwd()
    step.bwd(loss)
    return {n.replace("block.", ""): p.grad.clone() for n, p in step.model.named_parameters()}


def test_checkpointing_lowers_measured_peak_memory_and_keeps_gradients():
    recs, steps = {}, {}
    for ck in ("none", "full", "selective"):
        recs[ck], steps[ck] = measure_point_keep(Point(seq_len=768, batch_size=2, model=MID, checkpointing=ck), QUICK)
        assert recs[ck].status == "ok", recs[ck].error
    peak = {ck: r.peak_mem_bytes for ck, r in recs.items()}
    assert peak["full"] < 0.75 * peak["none"], peak
    assert peak["full"] < peak["selective"] < peak["none"], peak
    # recomputation: full recomputes every block's forward (counted = analytic), selective only elementwise work
    full = recs["full"]
    analytic = recompute_flops(**Point(seq_len=768, batch_size=2, model=MID, checkpointing="full").to_dict())
    assert full.recompute_flops_per_step == analytic > 0
    assert count_step_flops(steps["full"])["recompute_checkpoint"] == pytest.approx(analytic, rel=0.01)
    assert recs["selective"].recompute_flops_per_step == 0 == recs["none"].recompute_flops_per_step
    assert full.hfu == pytest.approx(full.mfu * (full.flops_per_step + analytic) / full.flops_per_step)
    assert full.flops_per_step == recs["none"].flops_per_step  # MFU counts the model's work only
    ref = _grads(Point(seq_len=256, batch_size=2, model=MID))
    for ck in ("full", "selective"):
        got = _grads(Point(seq_len=256, batch_size=2, model=MID, checkpointing=ck))
        assert got.keys() == ref.keys()
        for name, g in ref.items():
            torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=f"{ck}: {name}")


FACTORY = textwrap.dedent("""
    import torch

    class Net(torch.nn.Module):
        def __init__(self, with_blocks):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 16)
            layers = [torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
                      for _ in range(2)]
            if with_blocks:
                self.blocks = torch.nn.ModuleList(layers)
            else:
                self.layers = torch.nn.Sequential(*layers)
            self.head = torch.nn.Linear(16, 64)

        def forward(self, input_ids, labels):
            h = self.emb(input_ids)
            for block in (self.blocks if hasattr(self, "blocks") else self.layers):
                h = h + block(h)
            return torch.nn.functional.cross_entropy(self.head(h).flatten(0, 1), labels.flatten())

    def build(point, with_blocks=True):
        return Net(with_blocks)
""")


def test_factory_models_checkpoint_their_blocks_or_are_unsupported(tmp_path, monkeypatch):
    (tmp_path / "lever_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = ModelConfig(arch="factory", factory="lever_factory:build", vocab_size=64, max_seq_len=256)
    ok = measure_point(Point(seq_len=64, batch_size=2, model=model, checkpointing="selective"), QUICK)
    assert ok.status == "ok", ok.error
    assert ok.recompute_flops_per_step == 0  # selective saves the matmul outputs
    full = measure_point(Point(seq_len=64, batch_size=2, model=model, checkpointing="full"), QUICK)
    assert full.status == "ok" and full.recompute_flops_per_step > 0  # counted: the blocks' forward again
    bare = ModelConfig(arch="factory", factory="lever_factory:build", factory_args={"with_blocks": False},
                       vocab_size=64, max_seq_len=256)
    rec = measure_point(Point(seq_len=64, batch_size=2, model=bare, checkpointing="full"), QUICK)
    assert rec.status == "unsupported" and "`blocks` attribute" in rec.error


# ---------------------------------------------------------------- optimizer implementation
def test_each_optimizer_impl_trains_and_they_agree():
    params = {}
    for optimizer in ("adamw", "sgd"):
        for impl in ("auto", "fused", "foreach", "forloop"):
            step = build_step(Point(seq_len=32, batch_size=2, model=TINY,
                                    train=TrainConfig(optimizer=optimizer, optimizer_impl=impl, lr=1e-2)))
            losses = [float(step().detach()) for _ in range(6)]
            assert losses[-1] < losses[0], (optimizer, impl, losses)
            want = {"auto": "foreach" if optimizer == "sgd" else "fused"}.get(impl, impl)
            assert step.optimizer_impl == want
            params[optimizer, impl] = [p.detach().clone() for p in step.model.parameters()]
        for impl in ("fused", "foreach", "forloop"):  # the same update up to rounding (6 steps of lr 1e-2 each)
            for a, b in zip(params[optimizer, "auto"], params[optimizer, impl]):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-4)
    rec = measure_point(Point(seq_len=32, batch_size=2, model=TINY, train=TrainConfig(optimizer_impl="forloop")),
                        QUICK)
    assert rec.status == "ok" and rec.optimizer_impl_used == "forloop" and rec.to_dict()["optimizer_impl"] == "forloop"


# ---------------------------------------------------------------- what to try next (hand-made frames)
def _steps(ms: float, rel: float = 0.02, n: int = 40, key: str = "") -> list[float]:
    z = np.random.default_rng(zlib.crc32(f"{key}{ms}".encode())).standard_normal(n)
    return list(ms * np.exp(rel * (z - np.median(z))))


def _row(step_ms: float, status="ok", opt=0.1, mem=None, **cfg) -> dict:
    key = json.dumps(cfg, sort_keys=True)
    values = {}
    if status == "ok":
        values = dict(step_ms_median=step_ms, step_ms_samples=_steps(step_ms, key=key),
                      opt_ms_samples=_steps(opt * step_ms, key=key + "o"), fwd_ms_median=0.3 * step_ms,
                      bwd_ms_median=(0.7 - opt) * step_ms, opt_ms_median=opt * step_ms, peak_mem_bytes=mem,
                      optimizer_impl_used=cfg.pop("used", "fused"))
        values["compile_s"] = cfg.pop("compile_s", None)
    cfg = {**Point(seq_len=1024, batch_size=4, model=MID).to_dict(), **cfg}
    pid = Point.from_dict(cfg).point_id
    return Record.from_columns(point_id=pid, status=status, **cfg, **values).to_dict()


def _frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def test_swept_levers_state_their_measured_effect_ranked():
    pts = _frame(
        _row(100.0, mem=260e6, seq_len=1024), _row(77.0, mem=250e6, seq_len=1024, compile="default", compile_s=41.0),
        _row(131.0, mem=100e6, seq_len=1024, checkpointing="full"),
        _row(40.0, mem=100e6, seq_len=256), _row(40.0, mem=100e6, seq_len=256, compile="default", compile_s=38.0),
    )
    found = lever_effects(pts)
    text = [f.text for f in found]
    assert len(found) == 3 and all(f.rule == "lever_effect" for f in found)
    # ranked by the size of the effect: checkpointing's memory (2.6x) before compile's 1.3x
    assert text[0].startswith("activation checkpointing (full) cuts peak memory 2.6x (248 MiB -> 95.4 MiB) at T=1024")
    assert "for +31% step time" in text[0] and "use it when the batch does not fit" in text[0]
    assert text[1].startswith("compile (default) is 1.3x faster (95% CI")
    assert "at T=1024 and pays back its 41 s of compiling after 1,783 steps" in text[1]
    assert "compile (default) is" in text[2] and "by the medians but not clearly (95% CI of the ratio" in text[2]
    assert "at T=256 and the difference is within the noise" in text[2]
    assert found[1].point_ids == [pts.point_id[0], pts.point_id[1]]
    assert found[1].evidence[0]["break_even_steps"] == pytest.approx(41 / 0.023, rel=1e-4)


def test_optimizer_impl_effect_is_read_on_the_optimizer_phase():
    pts = _frame(_row(100.0, opt=0.30, seq_len=128), _row(80.0, opt=0.125, seq_len=128, optimizer_impl="forloop",
                                                          used="forloop"))
    (f,) = lever_effects(pts)
    assert f.text.startswith("optimizer_impl forloop makes the optimizer step 3.0x faster than auto (fused) "
                             "(30 ms -> 10 ms")
    assert "the whole step is -20%" in f.text


def test_no_lever_effect_without_a_pair_that_differs_in_one_lever_only():
    assert lever_effects(_frame(_row(100.0, seq_len=128), _row(200.0, seq_len=256))) == []
    # compile and checkpointing changed together: neither effect can be told apart
    assert lever_effects(_frame(_row(100.0), _row(90.0, compile="default", checkpointing="full"))) == []
    # a failed candidate is not an effect
    assert lever_effects(_frame(_row(100.0), _row(0, status="error", compile="default"))) == []


def _ops(shares: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [{"point_id": pid, "name": f"aten::{cat}", "phase": "fwd", "category": cat, "region": None,
             "device": "cpu", "self_ms": 100 * s, "total_ms": 100 * s, "calls": 1.0, "self_mem_bytes": 0.0}
            for pid, cats in shares.items() for cat, s in cats.items()]
    return pd.DataFrame(rows)


def _rules(found) -> str:
    return " | ".join(f.text for f in found)


def test_attention_rule_fires_for_an_unfused_kernel_and_not_otherwise():
    pts = _frame(_row(100.0, attention="naive"))
    pid = pts.point_id[0]
    hot = suggestions(pts, _ops({pid: {"attention": 0.45, "gemm": 0.55}}))
    assert "Attention takes 45% of the profiled step" in _rules(hot)
    assert "`--set sweep.attention=[naive,sdpa]`" in _rules(hot)
    assert "Attention takes" not in _rules(suggestions(pts, _ops({pid: {"attention": 0.1, "gemm": 0.9}})))
    flash = _frame(_row(100.0, attention="sdpa"))
    assert "Attention takes" not in _rules(suggestions(flash, _ops({flash.point_id[0]: {"attention": 0.45,
                                                                                          "gemm": 0.55}})))
    assert "Attention takes" not in _rules(suggestions(pts))  # no profile, no claim


def test_lm_head_rule_names_the_vocabulary_override():
    pts = _frame(_row(100.0))
    pid = pts.point_id[0]
    text = _rules(suggestions(pts, _ops({pid: {"lm_head_loss": 0.35, "gemm": 0.65}})))
    assert "LM head + loss takes 35% of the profiled step" in text and "V=256 tokens" in text
    assert "`--set sweep.vocab_size=[256,64]`" in text and "chunked cross-entropy" in text
    assert "LM head" not in _rules(suggestions(pts, _ops({pid: {"lm_head_loss": 0.05, "gemm": 0.95}})))


def test_gpu_idle_rule_suggests_cuda_graphs_unless_measured():
    idle = _row(10.0, device="cuda")
    idle["gpu_idle_share"], idle["kernel_launches_per_step"] = 0.55, 1200.0
    text = _rules(suggestions(_frame(idle)))
    assert "The GPU is idle 55% of the profiled step" in text and "1,200 kernel launches" in text
    assert "`--set sweep.compile=[none,reduce-overhead]`" in text and "`--set sweep.batch_size=[4,16]`" in text
    busy = {**idle, "gpu_idle_share": 0.1}
    assert "GPU is idle" not in _rules(suggestions(_frame(busy)))
    graphs = _row(8.0, device="cuda", compile="reduce-overhead", compile_s=20.0)
    assert "GPU is idle" not in _rules(suggestions(_frame(idle, graphs)))


def test_oom_rule_points_to_checkpointing_and_bf16():
    pts = _frame(_row(100.0, seq_len=512, mem=3e9), _row(0, status="oom", seq_len=1024))
    text = _rules(suggestions(pts))
    assert text.startswith("1 of 2 points ran out of memory, the first at T=1024")
    assert "`--set sweep.checkpointing=[none,full]`" in text and "`--set sweep.precision=[fp32,bf16]`" in text
    assert "2.79 GiB" in text
    assert "out of memory" not in _rules(suggestions(_frame(_row(100.0, seq_len=512))))


def test_optimizer_rule_fires_only_when_the_optimizer_is_not_fused():
    slow = _frame(_row(100.0, opt=0.35, used="foreach"))
    text = _rules(suggestions(slow))
    assert "The optimizer takes 35% of the step" in text and "foreach implementation" in text
    assert "`--set sweep.optimizer_impl=[auto,fused]`" in text
    assert "optimizer takes" not in _rules(suggestions(_frame(_row(100.0, opt=0.35, used="fused"))))
    assert "optimizer takes" not in _rules(suggestions(_frame(_row(100.0, opt=0.05, used="foreach"))))


def test_fusion_rule_suggests_compile_for_memory_bound_work():
    pts = _frame(_row(100.0))
    pid = pts.point_id[0]
    text = _rules(suggestions(pts, _ops({pid: {"norm": 0.12, "activation": 0.1, "elementwise": 0.08, "gemm": 0.7}})))
    assert "take 30% of the profiled step" in text and "`--set sweep.compile=[none,default]`" in text
    both = _frame(_row(100.0), _row(90.0, compile="default", compile_s=30.0))
    ops = _ops({p: {"norm": 0.3, "gemm": 0.7} for p in both.point_id})
    assert "torch.compile fuses" not in _rules(suggestions(both, ops))
    assert "compile (default)" in _rules(what_to_try(both, ops))


def test_analyze_and_the_report_show_what_to_try_next(tmp_path):
    rows = [_row(100.0, mem=int(260e6), seq_len=1024),
            _row(131.0, mem=int(100e6), seq_len=1024, checkpointing="full"), _row(0, status="oom", seq_len=4096)]
    run = tmp_path / "run"
    write_points(run / POINTS_FILE, rows, {"suite": "levers", "run_id": "r1"})
    r = CliRunner().invoke(app, ["analyze", str(run)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = " ".join(r.stdout.split())
    assert "What to try next" in out and out.index("What to try next") < out.index("Findings")
    assert "activation checkpointing (full) cuts peak memory 2.6x" in out and "ran out of memory" in out
    r = CliRunner().invoke(app, ["analyze", str(run), "--json"])
    rules = [f["rule"] for f in json.loads(r.stdout)]
    assert "lever_effect" in rules and "try_next" in rules
    html = render_report([run])
    assert html.index('id="levers"') < html.index('id="findings"')
    assert "What to try next</h2>" in html and "cuts peak memory 2.6x" in html
    assert "<code>--set sweep.precision=[fp32,bf16]</code>" in html


def test_hugging_face_models_checkpoint_through_their_own_switch():
    pytest.importorskip("transformers")
    model = ModelConfig(arch="hf", hf={"model_type": "gpt2"}, d_model=32, n_layers=2, n_heads=2, vocab_size=128,
                        max_seq_len=256)
    recs = {ck: measure_point(Point(seq_len=64, batch_size=2, model=model, checkpointing=ck), QUICK)
            for ck in ("full", "selective")}
    assert all(r.status == "ok" for r in recs.values()), {k: r.error for k, r in recs.items()}
    assert recs["full"].recompute_flops_per_step > 0  # counted: the step with minus without checkpointing
    assert recs["selective"].recompute_flops_per_step == 0
    assert recs["full"].hfu > recs["full"].mfu
