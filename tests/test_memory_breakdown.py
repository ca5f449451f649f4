"""Where the peak goes: categories at the peak, their closed forms, the holders of the activations."""

from __future__ import annotations

import json

import pytest

from txbench import ModelConfig, Point, measure_point

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128, max_seq_len=1024)
CATEGORIES = ("peak_parameters_bytes", "peak_gradients_bytes", "peak_optimizer_state_bytes", "peak_activations_bytes",
              "peak_temporaries_bytes", "peak_inputs_bytes", "peak_other_bytes")


def _measure(quick_measure, **kw):
    kw.setdefault("model", TINY)
    rec = measure_point(Point(**{"seq_len": 128, "batch_size": 2, **kw}), quick_measure)
    assert rec.status == "ok", rec.error
    return rec


def test_categories_add_up_to_the_peak_and_match_closed_forms(quick_measure):
    rec = _measure(quick_measure, attention="naive")
    n = rec.params
    total = sum(getattr(rec, c) for c in CATEGORIES)
    assert total == pytest.approx(rec.peak_mem_bytes, rel=0.02)
    assert rec.peak_breakdown_error <= 0.02
    assert rec.peak_parameters_bytes == 4 * n  # fp32 weights
    # AdamW: exp_avg and exp_avg_sq (8N) plus one scalar step counter per parameter tensor
    assert 8 * n <= rec.peak_optimizer_state_bytes <= 8 * n + 8 * 64
    assert rec.peak_phase in ("forward", "backward", "optimizer")
    assert rec.peak_op and rec.peak_op.startswith("aten::")
    timeline = json.loads(rec.memory_timeline)
    assert max(timeline["gradients"]) == 4 * n  # every gradient is live at the end of backward
    assert set(timeline["phases"]) == {"forward", "backward", "optimizer"}
    assert len(timeline["t_ms"]) <= 240
    peak_at = timeline["t_ms"].index(timeline["peak_ms"])
    assert sum(timeline[c][peak_at] for c in timeline if c not in ("t_ms", "phases", "peak_ms")) == total


def _optimizer_temporaries(rec) -> int:
    timeline = json.loads(rec.memory_timeline)
    a, b = timeline["phases"]["optimizer"]
    return max(v for t, v in zip(timeline["t_ms"], timeline["temporaries"]) if a <= t <= b)


def test_the_optimizers_intermediates_are_named_temporaries(quick_measure):
    from txbench.config import TrainConfig

    foreach = _measure(quick_measure, seq_len=16, train=TrainConfig(optimizer_impl="foreach"))
    forloop = _measure(quick_measure, seq_len=16, train=TrainConfig(optimizer_impl="forloop"))
    assert (foreach.optimizer_impl_used, forloop.optimizer_impl_used) == ("foreach", "forloop")
    n = foreach.params
    largest = 4 * TINY.d_model * max(TINY.vocab_size, TINY.max_seq_len, 4 * TINY.d_model)  # bytes of one tensor
    # foreach AdamW takes the square root of every exp_avg_sq at once: 4N bytes of intermediates
    assert _optimizer_temporaries(foreach) >= 4 * n
    # the for-loop holds one parameter's intermediates at a time (measured: about twice the largest tensor)
    assert 0 < _optimizer_temporaries(forloop) <= 3 * largest
    for rec in (foreach, forloop):
        assert sum(getattr(rec, c) for c in CATEGORIES) == pytest.approx(rec.peak_mem_bytes, rel=0.02)


def test_naive_attention_holds_its_probabilities_and_sdpa_does_not(quick_measure):
    B, T, H, C = 2, 128, TINY.n_heads, TINY.d_model
    scores = B * H * T * T * 4  # the softmax's output, saved for backward (and for probs @ V)
    naive = json.loads(_measure(quick_measure, attention="naive").activation_holders)["decoder.0.attn"]
    flash = json.loads(_measure(quick_measure, attention="sdpa_flash").activation_holders)["decoder.0.attn"]
    # naive: the probabilities plus q, k, v and its input (each B*T*C*4) at most
    assert scores <= naive <= scores + 6 * B * T * C * 4
    # flash attention saves q, k, v, the output and the log-sum-exp: no T x T tensor
    assert flash < scores
    assert naive - flash >= scores - 2 * B * T * C * 4


def test_compiled_point_keeps_its_breakdown_without_holders(quick_measure):
    rec = _measure(quick_measure, attention="sdpa", compile="default", seq_len=32)
    assert rec.activation_holders is None  # a compiled forward saves inside its graph: no module to name
    total = sum(getattr(rec, c) for c in CATEGORIES)
    assert total == pytest.approx(rec.peak_mem_bytes, rel=0.02)
    assert rec.peak_parameters_bytes >= 4 * rec.params


# ---------------------------------------------------------------- the pre-flight estimate
FACTORY = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(64, 32)
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(),
                                                              torch.nn.Linear(128, 32)) for _ in range(2))
        self.head = torch.nn.Linear(32, 64)

    def forward(self, input_ids, labels):
        h = self.emb(input_ids)
        for block in self.blocks:
            h = h + block(h)
        return torch.nn.functional.cross_entropy(self.head(h).flatten(0, 1), labels.flatten())


def build(point):
    return Net()
'''
HF = {"arch": "hf", "vocab_size": 128, "hf": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                              "num_hidden_layers": 1, "num_attention_heads": 2,
                                              "num_key_value_heads": 1}}


def _estimate_json(suite, *args, memory="1GiB", full=False) -> dict:
    from typer.testing import CliRunner

    from txbench.cli import app

    res = CliRunner().invoke(app, ["estimate", str(suite), "--format", "json", "--memory", memory, *args])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    return out if full else {p["point_id"]: p for p in out["points"]}


@pytest.mark.parametrize("model", ["reference", "hf", "factory", "moe"])
def test_estimate_within_ten_percent_of_the_measured_peak(model, write_suite, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from txbench.cli import app
    from txbench.store import load_points

    over = {"sweep": {"seq_len": [64, 256], "batch_size": [2], "attention": ["naive" if model == "reference" else
                                                                            "sdpa"]}}
    if model == "hf":
        over["model"] = HF
    if model == "moe":  # a mixture of experts: grouped matmuls whose fake kernel takes only bf16
        over["model"] = {"arch": "hf", "vocab_size": 128, "d_model": 32, "n_heads": 2, "n_layers": 1,
                         "hf": {"model_type": "mixtral", "intermediate_size": 64, "num_local_experts": 4,
                                "num_experts_per_tok": 2}}
    if model == "factory":
        (tmp_path / "est_factory.py").write_text(FACTORY)
        monkeypatch.chdir(tmp_path)  # the workers import the factory from their working directory
        monkeypatch.syspath_prepend(str(tmp_path))
        over["model"] = {"arch": "factory", "factory": "est_factory:build", "vocab_size": 64}
    suite = write_suite(f"est_{model}", **over)
    predicted = _estimate_json(suite)
    assert all(p["headroom_bytes"] == 2**30 - p["predicted_peak_bytes"] for p in predicted.values())
    res = CliRunner().invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "r"), "--estimate", "-q",
                                   "--no-report", "--no-profile"])
    assert res.exit_code == 0, res.output
    points = load_points(next((tmp_path / "r").glob("*/*")))
    assert (points["status"] == "ok").all(), points["error"].tolist()
    for _, row in points.iterrows():
        assert row["predicted_peak_bytes"] == predicted[row["point_id"]]["predicted_peak_bytes"]
        assert abs(row["predicted_peak_bytes"] / row["peak_mem_bytes"] - 1) <= 0.10, row["point_id"]


def test_points_predicted_above_the_memory_are_stored_not_run(write_suite, tmp_path):
    from typer.testing import CliRunner

    from txbench.cli import app
    from txbench.store import load_points

    suite = write_suite("est_oom", sweep={"seq_len": [32, 512], "batch_size": [2], "attention": ["naive"]},
                        measure={"device_memory": "1MiB"})
    res = CliRunner().invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "r"), "--skip-predicted-oom",
                                   "-q", "--no-report", "--no-profile"])
    assert res.exit_code == 0, res.output
    points = load_points(next((tmp_path / "r").glob("*/*"))).set_index("seq_len")
    predicted = _estimate_json(suite)
    big = points.loc[512]
    assert big["status"] == "predicted_oom" and "measure.device_memory" in big["error"]
    assert pd_isna(big["step_ms_median"]) and big["predicted_peak_bytes"] > 2**20 * 1.1
    small_id = points.loc[32, "point_id"]
    if predicted[small_id]["predicted_peak_bytes"] <= 2**20 * 1.1:
        assert points.loc[32, "status"] == "ok"
    # analyze's forecast rests on the estimates where too few points ran, and names the point never measured
    res = CliRunner().invoke(app, ["analyze", str(next((tmp_path / "r").glob("*/*"))), "--json", "--memory", "1MiB"])
    assert res.exit_code == 0, res.output
    (fc,) = [f for f in json.loads(res.stdout) if f["rule"] == "forecast"]
    assert "pre-flight estimates" in fc["text"] and "T=512 (predicted_oom)" in fc["text"]


@pytest.mark.parametrize("field", ["batch_size", "seq_len"])
def test_largest_that_fits_is_bisected_on_the_estimate_and_confirmed(field, write_suite, tmp_path):
    suite = write_suite(f"largest_{field}", sweep={"seq_len": [64], "batch_size": [2], "attention": ["naive"]})
    memory = 24 * 2**20
    out = _estimate_json(suite, "--largest", field, "--confirm", "--results-dir", str(tmp_path / "r"),
                         memory="24MiB", full=True)
    (found,) = out["largest"]
    v = found["value"]
    assert found["field"] == field and v > (2 if field == "batch_size" else 64)
    # the limit: v fits, v + 1 does not (each estimated on its own)
    sweep = {"seq_len": [64, v, v + 1] if field == "seq_len" else [64],
             "batch_size": [2, v, v + 1] if field == "batch_size" else [2], "attention": ["naive"]}
    around = {p["label"]: p["predicted_peak_bytes"] for p in _estimate_json(
        write_suite(f"around_{field}", sweep=sweep), memory="24MiB").values()}
    at = {lbl.split(" T=" if field == "seq_len" else " B=")[1].split()[0]: b for lbl, b in around.items()}
    assert at[str(v)] == found["predicted_peak_bytes"] <= memory < at[str(v + 1)]
    # one real run of that point: its measured peak, stored as a run
    confirmed = found["confirmed"]
    assert confirmed["status"] == "ok" and abs(confirmed["error"]) <= 0.10
    assert confirmed["fits"] == (confirmed["peak_mem_bytes"] <= memory)
    from txbench.store import load_points

    stored = load_points(confirmed["run_dir"])
    assert stored["point_id"].tolist() == [found["point_id"]] and stored[field].tolist() == [v]


def test_largest_sequence_is_bounded_by_the_models_position_table():
    from txbench.measure.estimate import largest_fitting

    short = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=128, max_seq_len=96)
    found = largest_fitting(Point(model=short, seq_len=32, batch_size=2), "seq_len", 2**40)
    assert found.value == 96 and "bounded by the model" in found.note and "max_seq_len" in found.note
    assert found.headroom_bytes == 2**40 - found.predicted_peak_bytes


def test_confirm_without_largest_is_exit_2(write_suite):
    from typer.testing import CliRunner

    from txbench.cli import app

    res = CliRunner().invoke(app, ["estimate", str(write_suite("conf")), "--confirm"])
    assert res.exit_code == 2 and "--largest" in res.output


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def test_bad_memory_size_is_exit_2_naming_the_option(write_suite):
    from typer.testing import CliRunner

    from txbench.cli import app

    res = CliRunner().invoke(app, ["estimate", str(write_suite("bad")), "--memory", "lots"])
    assert res.exit_code == 2 and "--memory" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["validate", str(write_suite("bad2", measure={"device_memory": "lots"}))])
    assert res.exit_code == 2 and "device_memory" in res.output


def test_an_oom_keeps_the_snapshot_of_its_rerun_linked_from_the_report(tmp_path, monkeypatch):
    """The snapshot path of a CUDA OOM, exercised on CPU: the allocator's history API is stood in for (this
    machine has no CUDA allocator); the rerun, the cap, the record and the report link are txbench's own."""
    from txbench import torch_compat
    from txbench._faults import Fault
    from txbench.config import MeasureConfig
    from txbench.measure import memory
    from txbench.pipeline import run_point
    from txbench.report.html import render_report
    from txbench.store import POINTS_FILE, write_points

    reruns = []

    def snapshot(rerun, path, max_entries=100_000):
        try:
            rerun()
        except RuntimeError as exc:
            reruns.append(str(exc))
            with open(path, "wb") as f:
                f.write(b"x" * 4096)
            return True
        return False

    monkeypatch.setattr(torch_compat, "cuda_memory_snapshot", snapshot)
    monkeypatch.setattr(memory, "SNAPSHOT_DEVICES", ("cuda", "cpu"))
    point = Point(model=TINY, seq_len=32, batch_size=2)
    run = tmp_path / "run"
    rec = run_point(point, MeasureConfig(), hooks=Fault("oom"),
                    snapshot_path=str(run / "snapshots" / f"{point.point_id}.pickle")).record
    assert rec.status == "oom" and len(reruns) == 1 and "can't allocate memory" in reruns[0]
    assert rec.memory_snapshot == f"snapshots/{point.point_id}.pickle"
    assert (run / rec.memory_snapshot).stat().st_size == 4096
    write_points(run / POINTS_FILE, [rec.to_dict()], {"suite": "oom", "run_id": "r1", "env": {}})
    html = render_report([run])
    assert f'href="snapshots/{point.point_id}.pickle"' in html
    # over the cap: deleted, and the row says why
    monkeypatch.setattr(memory, "SNAPSHOT_CAP_BYTES", 1024)
    rec = run_point(point, MeasureConfig(), hooks=Fault("oom"),
                    snapshot_path=str(run / "snapshots" / "big.pickle")).record
    assert rec.status == "oom" and rec.memory_snapshot is None and "over the 1 KiB cap" in rec.error
    assert not (run / "snapshots" / "big.pickle").exists()
    # no device history (a CPU OOM as it really runs): no snapshot, no note
    monkeypatch.setattr(memory, "SNAPSHOT_DEVICES", ("cuda",))
    rec = run_point(point, MeasureConfig(), hooks=Fault("oom"),
                    snapshot_path=str(run / "snapshots" / "c.pickle")).record
    assert rec.status == "oom" and rec.memory_snapshot is None and "snapshot" not in rec.error
