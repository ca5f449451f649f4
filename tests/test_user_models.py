"""The user's own model: Hugging Face configs and factory functions through the whole pipeline."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from txbench.cli import app
from txbench.config import MeasureConfig, ModelConfig, Point
from txbench.pipeline import build_step, measure_point
from txbench.store import load_ops, load_points
from txbench.suite import parse_suite

from conftest import REPO, tiny_suite_yaml

transformers = pytest.importorskip("transformers")
runner = CliRunner()
QUICK = MeasureConfig(warmup_s=0.0, warmup_min_steps=1, min_steps=3, max_steps=3, max_s=1.0, profile_steps=0)
FAMILIES = [("gpt2", {}), ("llama", {"num_key_value_heads": 2}), ("qwen2", {"num_key_value_heads": 2}),
            ("bert", {}), ("t5", {})]


def hf_point(model_type: str, attention: str = "sdpa", **hf) -> Point:
    return Point(seq_len=32, batch_size=2, attention=attention,
                 model=ModelConfig(arch="hf", hf={"model_type": model_type, **hf}, d_model=64, n_layers=2,
                                   n_heads=4, vocab_size=256, max_seq_len=64))


@pytest.mark.parametrize("model_type,extra", FAMILIES)
def test_each_family_trains_a_step_with_closed_form_flops(model_type, extra):
    rec = measure_point(hf_point(model_type, attention="sdpa_math", **extra), QUICK)
    assert rec.status == "ok", rec.error
    assert rec.step_ms_median > 0 and rec.n_steps == 3
    assert rec.params > 0 and rec.optimizer_state_bytes > 0 and rec.peak_mem_bytes > rec.param_bytes
    # the closed form (6N + 12 L d T per token) and the FLOP counter agree
    assert rec.flops_per_step > 0 and rec.attn_flops_per_step > 0
    assert rec.flops_counter_per_step == pytest.approx(rec.flops_per_step, rel=0.02)


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_eager_and_sdpa_math_agree_on_loss_and_gradients(model_type):
    results = {}
    for att in ("naive", "sdpa_math"):
        step = build_step(hf_point(model_type, attention=att))
        loss = step.fwd()
        step.bwd(loss)
        results[att] = (loss.detach(), {n: p.grad.detach().clone() for n, p in step.model.named_parameters()
                                        if p.grad is not None})
    (l_a, g_a), (l_b, g_b) = results["naive"], results["sdpa_math"]
    torch.testing.assert_close(l_a, l_b, atol=1e-5, rtol=1e-5)
    assert g_a.keys() == g_b.keys() and len(g_a) > 10
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_weights_are_seeded_and_fp32():
    a, b = build_step(hf_point("llama")), build_step(hf_point("llama"))
    c = build_step(Point.from_dict({**hf_point("llama").to_dict(), "seed": 1}))
    pa, pb, pc = (dict(s.model.named_parameters()) for s in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert not all(torch.equal(pa[n], pc[n]) for n in pa)
    assert {p.dtype for p in pa.values()} == {torch.float32}


def test_attention_axis_maps_onto_attn_implementation():
    assert build_step(hf_point("llama", attention="naive")).model.config._attn_implementation == "eager"
    assert build_step(hf_point("llama", attention="sdpa_flash")).model.config._attn_implementation == "sdpa"
    rec = measure_point(hf_point("llama", attention="mha"), QUICK)
    assert rec.status == "unsupported" and "attn_implementation" in rec.error
    rec = measure_point(hf_point("llama", attention="flash_attention_2"), QUICK)
    assert rec.status == "unsupported" and "CUDA" in rec.error
    # T5's position bias is an additive mask: the flash kernel refuses it, which is data, not a crash
    rec = measure_point(hf_point("t5", attention="sdpa_flash"), QUICK)
    assert rec.status == "unsupported" and "sdpa_flash" in rec.error


def test_hf_fields_are_sweep_axes_with_labels():
    suite = parse_suite({"name": "kv", "device": "cpu",
                         "model": {"arch": "hf", "hf": {"model_type": "llama"}, "d_model": 64, "n_heads": 4},
                         "sweep": {"hf.num_key_value_heads": [1, 2, 4], "seq_len": [32]}})
    points = suite.points("cpu")
    assert [p.model.hf for p in points] == [{"model_type": "llama", "num_key_value_heads": k} for k in (1, 2, 4)]
    assert len({p.point_id for p in points}) == 3
    assert "llama kv=2" in points[1].label()
    assert build_step(points[0]).model.config.num_key_value_heads == 1


@pytest.mark.parametrize("model_type", ["mistral", "gemma", "phi3", "falcon"])
def test_family_defaults_that_do_not_fit_the_sizes_are_refitted(model_type):
    """Mistral's 8 key/value heads, Gemma's head_dim 256, Phi-3's token ids past the vocabulary: each family
    trains at txbench's sizes (4 heads of 16, 256 tokens)."""
    rec = measure_point(hf_point(model_type), QUICK)
    assert rec.status == "ok", rec.error
    config = build_step(hf_point(model_type)).model.config
    assert getattr(config, "num_key_value_heads", 4) == 4 and getattr(config, "head_dim", 16) == 16
    assert all(not isinstance(getattr(config, t, None), int) or getattr(config, t) < 256
               for t in ("pad_token_id", "bos_token_id", "eos_token_id"))


def test_an_attention_the_family_lacks_is_unsupported_not_an_error():
    rec = measure_point(hf_point("gemma2", attention="sdpa"), QUICK)
    assert rec.status == "unsupported" and "does not support" in rec.error


@pytest.mark.parametrize("model,words", [
    ({"arch": "hf", "hf": {"model_type": "lama"}}, ["model.hf.model_type", "did you mean 'llama'"]),
    ({"arch": "hf", "hf": {"model_type": "llama", "num_kv_heads": 2}},
     ["model.hf.num_kv_heads", "LlamaConfig has no field", "did you mean 'num_key_value_heads'"]),
    ({"arch": "hf"}, ["model.hf.model_type", "needs hf: {model_type"]),
    ({"arch": "factory"}, ["model.factory", "module:function"]),
    ({"arch": "factory", "factory": "no_such_pkg.models:build"}, ["model.factory", "does not import"]),
    ({"arch": "factory", "factory": "json:dumps_nothing"}, ["model.factory", "has no 'dumps_nothing'"]),
    ({"arch": "factory", "factory": "json:__doc__"}, ["model.factory", "not callable"]),
    ({"arch": "factory", "factory": "build"}, ["model.factory", "module:function"]),
])
def test_bad_user_models_fail_validation_with_the_field(tmp_path, model, words):
    suite = tmp_path / "bad.yaml"
    suite.write_text(tiny_suite_yaml("bad", model=model))
    r = runner.invoke(app, ["validate", str(suite)])
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert "Traceback" not in r.output


def test_hf_without_transformers_names_the_install_line(tmp_path, monkeypatch):
    import txbench.usermodels as um

    monkeypatch.setattr(um, "_transformers", lambda: None)
    suite = tmp_path / "hf.yaml"
    suite.write_text(tiny_suite_yaml("hf", model={"arch": "hf", "hf": {"model_type": "llama"}}))
    r = runner.invoke(app, ["validate", str(suite)])
    assert r.exit_code == 2 and "pip install 'txbench[hf]'" in r.output


BAD_FACTORIES = '''
import torch

def no_module(point):
    return 42

def no_loss(point):
    return torch.nn.Linear(4, 4)

def raises(point):
    raise RuntimeError("the factory broke")
'''


@pytest.mark.parametrize("fn,words", [("no_module", "must return a torch.nn.Module"),
                                      ("raises", "the factory broke")])
def test_factory_failures_are_point_errors_and_the_sweep_goes_on(tmp_path, monkeypatch, fn, words):
    (tmp_path / "bad_factories.py").write_text(BAD_FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = tmp_path / "s.yaml"
    suite.write_text(tiny_suite_yaml("s", model={"arch": "factory", "factory": f"bad_factories:{fn}"},
                                     sweep={"seq_len": [16, 32], "batch_size": [2], "attention": ["sdpa"]}))
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "res"), "--no-report", "-q"])
    assert r.exit_code == 0, r.output
    df = load_points(next((tmp_path / "res" / "s").iterdir()))
    assert list(df["status"]) == ["error", "error"]
    assert all(words in e for e in df["error"])


def test_factory_example_end_to_end_through_the_cli(tmp_path, monkeypatch):
    example = tmp_path / "my_model"
    shutil.copytree(REPO / "examples" / "my_model", example, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(example)
    monkeypatch.syspath_prepend(str(example))
    r = runner.invoke(app, ["validate", "suite.yaml"])
    assert r.exit_code == 0 and "my_models/moe.py" in r.output.replace("\n", ""), r.output
    args = ["run", "suite.yaml", "--results-dir", str(tmp_path / "res"), "-q",
            "--set", "sweep.seq_len=[32]", "--set", "sweep.attention=[naive,sdpa_flash]",
            "--set", "sweep.factory_args.n_experts=[2]", "--set", "model.d_model=32", "--set", "model.vocab_size=256",
            "--set", "measure.max_s=0.5", "--set", "measure.warmup_s=0", "--set", "measure.min_steps=3"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "res" / "my_model").iterdir())
    df = load_points(run)
    assert list(df["status"]) == ["ok", "ok"]
    assert (df["factory_args"] == '{"n_experts":2}').all()
    # no closed form: the step's FLOPs are the counted ones, so MFU is still there
    assert (df["flops_per_step"] > 0).all() and df["flops_per_step"].equals(df["flops_counter_per_step"])
    flash = df[df["attention"] == "sdpa_flash"].iloc[0]
    assert bool(flash["attention_verified"]), flash["attention_kernel"]
    ops = load_ops(run)
    assert ops is not None and len(ops) and set(ops["point_id"]) == set(df["point_id"])
    assert (run / "report.html").stat().st_size > 100_000


def test_attention_core_is_public_and_follows_impl():
    import txbench

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    ref = txbench.attention_core(q, k, v, impl="naive", causal=True)
    for impl in ("sdpa", "sdpa_math", "sdpa_flash"):
        torch.testing.assert_close(txbench.attention_core(q, k, v, impl=impl, causal=True), ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(txbench.attention_core(q, k, v, impl="naive", causal=False), ref)


def test_shipped_hf_suites_validate():
    for name in ("hf_llama", "hf_families"):
        r = runner.invoke(app, ["validate", str(REPO / "suites" / f"{name}.yaml")])
        assert r.exit_code == 0, r.output
