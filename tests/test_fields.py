"""The field table is the one vocabulary of a point: ids, validation, schema, columns and labels follow it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from txbench import fields
from txbench.config import Point, validate_point
from txbench.errors import PointError, SuiteError
from txbench.labels import fmt_bytes, fmt_num, label_of, short_labels
from txbench.record import Record
from txbench.store import points_schema
from txbench.suite import load_suite, parse_suite

ROOT = Path(__file__).resolve().parents[1]
IDS = json.loads((Path(__file__).parent / "data" / "point_ids.json").read_text())["suites"]


@pytest.mark.parametrize("suite", sorted(IDS))
def test_point_ids_of_shipped_suites_never_change(suite):
    # stored baselines in users' CI match points by id: an upgrade must keep every id
    s, _ = load_suite(ROOT / suite)
    for device, want in IDS[suite].items():
        got = {p.point_id: p.label() for p in s.points(device)}
        assert got == want, f"{suite} on {device}"


def test_a_field_added_at_its_default_keeps_every_point_id(monkeypatch):
    cfg = Point(seq_len=256, attention="naive").to_dict()
    before = fields.identity(cfg)
    new = fields.PointField("loss_impl", "point", str, "plain", "loss implementation", choices=("plain", "chunked"),
                            legacy_id=False)
    monkeypatch.setattr(fields, "FIELDS", fields.FIELDS + (new,))
    assert fields.identity(cfg) == before  # rows stored before the field existed
    assert fields.identity({**cfg, "loss_impl": "plain"}) == before  # new points at the default
    assert fields.identity({**cfg, "loss_impl": "chunked"}) == {**before, "loss_impl": "chunked"}


def test_the_levers_are_later_fields_that_enter_point_id_only_when_set():
    cfg = Point(seq_len=256, attention="naive").to_dict()
    assert {"compile", "checkpointing", "optimizer_impl"} <= set(cfg)
    legacy = {k: v for k, v in cfg.items() if fields.BY_NAME[k].legacy_id}
    assert fields.identity(cfg) == legacy
    for name, value in (("compile", "default"), ("checkpointing", "full"), ("optimizer_impl", "forloop")):
        assert not fields.BY_NAME[name].legacy_id
        assert fields.identity({**cfg, name: value}) == {**legacy, name: value}


def test_dataclasses_and_table_agree():
    sections = {"point": Point, "model": type(Point().model), "train": type(Point().train)}
    for section, cls in sections.items():
        declared = [f.name for f in dataclasses.fields(cls) if f.name not in ("model", "train")]
        assert sorted(declared) == sorted(f.name for f in fields.section_fields(section))


def test_every_point_field_is_a_record_and_parquet_column():
    cfg = Point().to_dict()
    row = Record.for_point(Point(seq_len=64), "ok").to_dict()
    schema = points_schema()
    for name in cfg:
        assert name in row and name in Record.columns() and name in schema.names, name
    assert list(row) == schema.names == Record.columns()
    assert row["seq_len"] == 64


def test_from_columns_round_trips_a_row():
    row = Record.for_point(Point(seq_len=64, precision="bf16"), "ok", step_ms_median=3.5).to_dict()
    assert Record.from_columns(**row).to_dict() == row


@pytest.mark.parametrize("field,value,words", [
    ("precision", "fp8", "allowed: fp32, tf32, bf16, fp16"),
    ("d_model", 0, "must be > 0"),
    ("dropout", 1.0, "must be < 1"),
    ("weight_decay", -0.1, "must be >= 0"),
    ("seq_len", 1.5, "must be an integer"),
    ("causal", "yes", "true or false"),
])
def test_validate_point_reads_the_table(field, value, words):
    cfg = {**Point().to_dict(), field: value}
    with pytest.raises(PointError) as err:
        validate_point(Point.from_dict(cfg))
    assert any(f == field and words in msg for f, msg in err.value.problems), err.value.problems


def test_suite_schema_and_sweep_values_come_from_the_table():
    with pytest.raises(SuiteError) as err:
        parse_suite({"name": "x", "model": {"norm": "batchnorm"}, "sweep": {"optimizer": ["adamw", "adamm"]}})
    text = str(err.value)
    assert "model.norm" in text and "layernorm" in text
    assert "sweep.optimizer[1]" in text and "did you mean 'adam'" in text


def test_labels_are_one_vocabulary():
    assert label_of({"seq_len": 512, "batch_size": 8, "d_model": 256, "vocab_size": 8192,
                     "precision": "bf16", "attention": "naive"}) == "T=512 B=8 d=256 V=8192 bf16 naive"
    df = pd.DataFrame([{**Point(seq_len=t, attention=a).to_dict(), "point_id": f"p{t}{a}"}
                       for t in (64, 128) for a in ("naive", "sdpa")])
    assert short_labels(df) == ["T=64 naive", "T=64 sdpa", "T=128 naive", "T=128 sdpa"]
    assert short_labels(df, sep="-", eq="") == ["T64-naive", "T64-sdpa", "T128-naive", "T128-sdpa"]
    # floats read back from Parquet are still written as integers for integer fields
    assert label_of({"seq_len": 512.0}) == "T=512"


@pytest.mark.parametrize("value,text", [(2.3e9, "2.3G"), (999_999, "1M"), (1234.5, "1.23k"), (12.0, "12"),
                                        (float("nan"), "-"), (None, "-"), (0, "0")])
def test_fmt_num(value, text):
    assert fmt_num(value) == text


@pytest.mark.parametrize("value,text", [(212.4 * 2**20, "212 MiB"), (1.5 * 2**30, "1.5 GiB"), (512, "512 B"),
                                        (2**20 - 10, "1 MiB"), (None, "-")])
def test_fmt_bytes(value, text):
    assert fmt_bytes(value) == text
