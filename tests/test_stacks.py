"""Levers that stack (compile x checkpointing x FSDP, compile per block) and loss parity in every comparison."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from txbench.analysis.findings import find
from txbench.analysis.levers import eager_twins, what_to_try
from txbench.cli import app
from txbench.numerics import compare, tolerance
from txbench.store import load_points

runner = CliRunner()

MODEL = {"arch": "decoder", "d_model": 32, "n_layers": 2, "n_heads": 2, "vocab_size": 128}
FAST = {"warmup_s": 0, "warmup_min_steps": 2, "min_steps": 3, "max_steps": 6, "max_s": 1, "profile_steps": 0,
        "timeout_s": 300}


def _write(tmp_path: Path, name: str, **suite) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "device": "cpu", **suite}))
    return p


def _run(tmp_path: Path, suite: Path, *args) -> pd.DataFrame:
    res = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "results"), "--no-report",
                              "--no-profile", "--json", *map(str, args)])
    assert res.exit_code == 0, res.output
    run_dir = json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])["run_dir"]
    return load_points(run_dir)


def test_compile_and_checkpointing_stack_and_keep_the_loss(tmp_path):
    """The 2x2 of compile and checkpointing (the combination used to fail inside dynamo), plus compile per block."""
    suite = _write(tmp_path, "stack2", model=MODEL, measure=FAST,
                   sweep={"seq_len": [64], "batch_size": [2], "attention": ["naive"], "threads": [1],
                          "compile": ["none", "default"], "checkpointing": ["none", "full"]})
    pts = _run(tmp_path, suite)
    assert list(pts["status"]) == ["ok"] * 4, pts[["compile", "checkpointing", "error"]].to_string()
    compiled = pts[pts["compile"] == "default"]
    assert compiled["compile_s"].notna().all() and compiled["compile_cache"].isin(["warm", "cold", "partial"]).all()
    assert pts["loss_trajectory"].map(len).eq(5).all() and pts["grad_norm_trajectory"].map(len).eq(5).all()
    eager = pts[(pts["compile"] == "none") & (pts["checkpointing"] == "none")].iloc[0]
    for _, row in pts.iterrows():  # every lever point keeps the eager loss within fp32's tolerance
        p = compare(eager["loss_trajectory"], row["loss_trajectory"], eager["grad_norm_trajectory"],
                    row["grad_norm_trajectory"], precision="fp32")
        assert p.verdict == "same" and p.loss_rel_diff <= tolerance("fp32"), (row["compile"], row["checkpointing"], p)
    # the losses fall: the trajectory is real training, not a repeated first loss
    assert eager["loss_trajectory"][-1] < eager["loss_trajectory"][0]
    assert len(eager_twins(pts)) == 3
    stacked = [f for f in what_to_try(pts) if f.rule == "lever_stack"]
    assert len(stacked) == 1 and stacked[0].text.startswith("#1 AC (full) + compile (default)")
    assert "than eager" in stacked[0].text or "as eager" in stacked[0].text
    assert not [f for f in find(pts) if f.rule == "numerics"]


def test_a_lever_that_changes_the_loss_is_a_numerics_warning(tmp_path):
    """A stored lever point whose trajectory leaves its eager twin's is named, with the step and the tolerance."""
    suite = _write(tmp_path, "numerics", model=MODEL, measure=FAST,
                   sweep={"seq_len": [64], "batch_size": [2], "attention": ["naive"], "threads": [1],
                          "checkpointing": ["none", "full"]})
    pts = _run(tmp_path, suite)
    assert not [f for f in find(pts) if f.rule == "numerics"]
    broken = pts.copy()
    i = broken.index[broken["checkpointing"] == "full"][0]
    broken.at[i, "loss_trajectory"] = [v * (1 + 1e-3 * k) for k, v in enumerate(broken.at[i, "loss_trajectory"])]
    found = [f for f in find(broken) if f.rule == "numerics"]
    assert len(found) == 1 and found[0].severity == "warning"
    text = found[0].text
    assert "AC (full) changes the math" in text and "step 5" in text and "tolerance 0.0001 (fp32" in text


def test_compile_per_block_compiles_one_graph_for_identical_blocks():
    from txbench.config import MeasureConfig, ModelConfig, Point
    from txbench.pipeline import measure_point_keep
    from txbench.torch_compat import dynamo_counts

    quick = MeasureConfig(warmup_s=0, warmup_min_steps=2, min_steps=3, max_steps=4, max_s=1, profile_steps=0)
    model = ModelConfig(d_model=32, n_layers=4, n_heads=2, vocab_size=128)
    before = dynamo_counts()
    rec, step = measure_point_keep(Point(seq_len=64, batch_size=2, model=model, compile="default",
                                         compile_scope="blocks", attention="naive"), quick)
    assert rec.status == "ok", rec.error
    assert len(step.compiled_blocks) == 4 and step.compiled is None
    # four identical blocks, one compiled frame: the others reuse it (no recompile in the timed steps either)
    assert dynamo_counts()["frames"] - before["frames"] == 1 and rec.recompiles == 0
    assert rec.compile_s is not None and rec.loss_trajectory and rec.flops_per_step > 0


@pytest.mark.parametrize("field,value", [("compile_scope", "layers"), ("measure.compile_cache", "hot")])
def test_bad_stack_fields_exit_2_naming_the_field(tmp_path, field, value):
    suite = {"model": MODEL, "sweep": {"seq_len": [64], "compile": ["default"]}}
    if field.startswith("measure."):
        suite["measure"] = {field.split(".")[1]: value}
    else:
        suite["sweep"][field] = [value]
    res = runner.invoke(app, ["validate", str(_write(tmp_path, "bad", **suite))])
    assert res.exit_code == 2, res.output
    assert field.split(".")[-1] in res.output and value in res.output and "Traceback" not in res.output


FACTORY = textwrap.dedent("""
    import torch

    ACT = {act!r}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 32)
            self.blocks = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(32, {width}), torch.nn.GELU() if ACT == "gelu" else torch.nn.ReLU(),
                                    torch.nn.Linear({width}, 32)) for _ in range(2))
            self.head = torch.nn.Linear(32, 64)

        def forward(self, input_ids, labels):
            h = self.emb(input_ids)
            for block in self.blocks:
                h = h + block(h)
            return torch.nn.functional.cross_entropy(self.head(h).flatten(0, 1), labels.flatten())

    def build(point):
        torch.manual_seed(0)
        return Net()
""")


def _side(tmp_path: Path, name: str, act: str, width: int) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "ab_numerics_model.py").write_text(FACTORY.format(act=act, width=width))
    return d


def test_ab_flags_a_faster_candidate_that_changes_the_math_and_an_aa_flags_nothing(tmp_path):
    suite = _write(tmp_path, "abnum", model={"arch": "factory", "factory": "ab_numerics_model:build",
                                             "vocab_size": 64},
                   measure={"warmup_s": 0.1, "warmup_min_steps": 2, "timeout_s": 120},
                   sweep={"seq_len": [64], "batch_size": [4], "threads": [1]})
    base = _side(tmp_path, "base", "gelu", 512)
    fast = _side(tmp_path, "fast", "relu", 128)  # a narrower MLP with another activation: faster, other math
    args = ["ab", str(suite), "--results-dir", str(tmp_path / "results"), "--quiet", "--max-s", "4",
            "--baseline-path", str(base)]
    res = runner.invoke(app, [*args, "--candidate-path", str(fast), "--format", "markdown"])
    assert res.exit_code == 1, res.output
    top = res.stdout.splitlines()[1]
    assert "🟠 **numerics changed**" in top, res.stdout
    assert "| loss |" in res.stdout and "numerics_changed" in res.stdout and "the math changed" in res.stdout
    res = runner.invoke(app, [*args, "--candidate-path", str(fast), "--format", "json", "--no-fail-on-numerics"])
    rows = json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])["rows"]
    loss = [r for r in rows if r["metric"] == "loss"]
    assert loss and loss[0]["verdict"] == "numerics_changed"
    assert res.exit_code == (1 if any(r["verdict"] == "regression" for r in rows) else 0), res.output
    # A/A: the same code on both sides keeps the same math (the A/A of each side sets the floor)
    res = runner.invoke(app, [*args, "--candidate-path", str(base), "--format", "json", "--all"])
    rows = json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])["rows"]
    loss = [r for r in rows if r["metric"] == "loss"]
    assert loss and loss[0]["verdict"] == "unchanged" and "same math" in loss[0]["note"], loss
    assert "A/A" in loss[0]["note"]
