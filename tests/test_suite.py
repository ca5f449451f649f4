"""Suite files: validation (all problems at once, with paths), overrides, expansion, excludes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from txbench.cli import app
from txbench.errors import SuiteError
from txbench.suite import load_suite, parse_suite

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _problems(raw) -> dict[str, str]:
    with pytest.raises(SuiteError) as ei:
        parse_suite(raw)
    return dict(ei.value.problems)


def test_unknown_keys_get_did_you_mean():
    probs = _problems({"name": "x", "modle": {}, "model": {"dropuot": 0.1}, "sweep": {"seqlen": [128]}})
    assert "did you mean 'model'" in probs["modle"]
    assert "did you mean 'dropout'" in probs["model.dropuot"]
    assert "did you mean 'seq_len'" in probs["sweep.seqlen"]


def test_wrong_types_empty_axes_and_impossible_values_reported_together():
    probs = _problems(
        {
            "name": "x",
            "model": {"d_model": "big", "n_layers": 0},
            "measure": {"max_s": -1},
            "sweep": {"batch_size": [], "attention": ["naive", "flash"], "precision": ["fp32", "fp8"]},
        }
    )
    assert "integer" in probs["model.d_model"]
    assert "greater than 0" in probs["model.n_layers"]
    assert "greater than 0" in probs["measure.max_s"]
    assert "empty axis" in probs["sweep.batch_size"]
    assert "allowed" in probs["sweep.attention[1]"] and "sdpa_flash" in probs["sweep.attention[1]"]
    assert "fp8" in probs["sweep.precision[1]"]
    assert len(probs) >= 6


def test_combinations_that_never_work_have_paths():
    probs = _problems({"name": "x", "model": {"d_model": 256}, "sweep": {"n_heads": [4, 8, 5], "seq_len": [128, 8192]}})
    assert probs["sweep.n_heads[2]"] == "5 does not divide model.d_model=256"
    assert "exceeds model.max_seq_len=4096" in probs["sweep.seq_len[1]"]


def test_exclude_keys_must_be_axes():
    probs = _problems({"name": "x", "sweep": {"seq_len": [64]}, "exclude": [{"attn": "naive"}]})
    assert "exclude[0].attn" in probs


def test_expansion_is_cartesian_minus_excludes():
    s = parse_suite(
        {
            "name": "x",
            "sweep": {"seq_len": [64, 128, 256], "attention": ["naive", "sdpa_flash"], "batch_size": 4},
            "exclude": [{"attention": "naive", "seq_len": [128, 256]}],
        }
    )
    pts = s.points("cpu")
    assert len(pts) == 6 - 2
    assert {(p.seq_len, p.attention) for p in pts} == {
        (64, "naive"), (64, "sdpa_flash"), (128, "sdpa_flash"), (256, "sdpa_flash")
    }
    assert all(p.batch_size == 4 for p in pts)
    assert len({p.point_id for p in pts}) == len(pts)


def test_any_model_field_is_an_axis():
    s = parse_suite(
        {"name": "x", "sweep": {"d_model": [64, 128], "arch": ["decoder", "encoder_decoder"], "lr": [1e-3]}}
    )
    pts = s.points("cpu")
    assert {(p.model.d_model, p.model.arch) for p in pts} == {
        (64, "decoder"), (64, "encoder_decoder"), (128, "decoder"), (128, "encoder_decoder")
    }


def test_set_overrides(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "measure": {"max_s": 20}, "sweep": {"seq_len": [64]}}))
    s, resolved = load_suite(p, ["measure.max_s=5", "sweep.seq_len=[128,256]", "model.d_model=64"])
    assert s.measure.max_s == 5 and s.sweep["seq_len"] == [128, 256] and s.model.d_model == 64
    assert resolved["measure"]["max_s"] == 5


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\nsweep: {seq_len: [64]}\n")
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 2
    assert "not valid YAML" in r.output
    assert "Traceback" not in r.output


def test_validate_cli_reports_all_problems_exit_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        yaml.safe_dump({"name": "x", "modle": {}, "sweep": {"attention": ["sdpa_flsh"], "precision": ["fp32", "fp8"]}})
    )
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())  # the console may wrap long lines
    assert "3 problem(s)" in out
    assert "modle: unknown key; did you mean 'model'?" in out
    assert "sweep.attention[0]: unknown value 'sdpa_flsh'; did you mean 'sdpa_flash'?" in out
    assert "sweep.precision[1]: unknown value 'fp8'" in out
    assert "Traceback" not in r.output


def test_validate_cli_ok_counts_points():
    r = runner.invoke(app, ["validate", str(REPO / "suites" / "seq_len.yaml")])
    assert r.exit_code == 0, r.output
    assert "points" in r.output


@pytest.mark.parametrize("path", sorted((REPO / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_are_valid(path):
    s, _ = load_suite(path)
    assert s.points("cpu")
    assert s.description
