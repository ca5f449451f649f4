"""Sharded sweeps (`txbench run --shard K/N`) and `txbench merge`: the shards of a real tiny sweep merge into
exactly the points of the full run, and merge refuses what would mix incomparable runs (docs/cluster.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from txbench.cli import app
from txbench.merge import parse_shard
from txbench.store import OPS_FILE, POINTS_FILE, load_ops, load_points, read_meta, write_points
from txbench.suite import in_shard

from conftest import tiny_suite_yaml
from factories import ENV, ok_record, op_rows, point, steps, write_run

runner = CliRunner()


def _flat(text: str) -> str:
    """Output with rich's box drawing removed and whitespace collapsed, so wrapped messages read as one line."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def _json_out(r) -> dict:
    return json.loads(r.stdout.strip().splitlines()[-1])


def _merge(*args):
    return runner.invoke(app, ["merge", *map(str, args)])


def _ids(run_dir) -> list[str]:
    return pq.read_table(Path(run_dir) / POINTS_FILE, columns=["point_id"]).column("point_id").to_pylist()


# --------------------------------------------------------------------------------------------------------------------
# one real tiny sweep, in full and as shards 1/2 and 2/2, shared by the tests of this module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The 4-point tiny suite run in full and as its two shards, each into its own results directory."""
    tmp = tmp_path_factory.mktemp("shards")
    suite = tmp / "tiny.yaml"
    suite.write_text(tiny_suite_yaml("tiny"))
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        # the session's cache, as conftest's per-test fixture sets it (it does not reach module fixtures)
        if "TXBENCH_CACHE_DIR" not in os.environ:
            mp.setenv("TXBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "txbench-cache"))
        for name, extra in (("full", []), ("s1", ["--shard", "1/2"]), ("s2", ["--shard", "2/2"])):
            r = runner.invoke(app, ["run", str(suite), "--results-dir", str(tmp / name), "--no-profile",
                                    "--no-report", "--json", *extra])
            assert r.exit_code == 0, r.output
            runs[name] = Path(_json_out(r)["run_dir"])
    return {"suite": suite, "tmp": tmp, **runs}


def test_shards_split_the_sweep_by_point_id(sweep):
    full, s1, s2 = _ids(sweep["full"]), _ids(sweep["s1"]), _ids(sweep["s2"])
    assert len(full) == 4
    # both shards hold points (the tiny suite's ids split 1 + 3), disjoint, together the full run
    assert s1 and s2 and not set(s1) & set(s2)
    assert sorted(s1 + s2) == sorted(full)
    assert all(in_shard(pid, (1, 2)) for pid in s1) and all(in_shard(pid, (2, 2)) for pid in s2)
    assert read_meta(sweep["s1"])["shard"] == [1, 2] and read_meta(sweep["s2"])["shard"] == [2, 2]
    assert "shard" not in read_meta(sweep["full"])


def test_merged_shards_are_the_full_run_and_report_and_analyze_work(sweep):
    out = sweep["tmp"] / "merged"
    r = _merge(sweep["s1"], sweep["s2"], "-o", out)
    assert r.exit_code == 0, r.output
    text = _flat(r.output)
    assert "merged 4 points from 2 runs" in text and "no duplicate points" in text and "missing" not in text
    ids = _ids(out)
    assert sorted(ids) == sorted(_ids(sweep["full"])) and len(set(ids)) == len(ids)
    # every record is the shard's own, unchanged
    merged = load_points(out).set_index("point_id")
    for shard in (sweep["s1"], sweep["s2"]):
        own = load_points(shard).set_index("point_id")
        assert list(merged.loc[own.index, "step_ms_median"]) == list(own["step_ms_median"])
        assert [list(x) for x in merged.loc[own.index, "step_ms_samples"]] == [list(x) for x in own["step_ms_samples"]]
    meta = read_meta(out)
    assert meta["suite"] == "tiny" and meta["device"] == "cpu" and meta["run_id"].startswith("merged-")
    assert "shard" not in meta
    sources = meta["merged_from"]
    assert [m["run_dir"] for m in sources] == [str(sweep["s1"]), str(sweep["s2"])]
    assert [m["shard"] for m in sources] == [[1, 2], [2, 2]]
    assert [m["run_id"] for m in sources] == [sweep["s1"].name, sweep["s2"].name]
    assert all(m["env"]["torch_version"] for m in sources)
    assert sorted(sources[0]["point_ids"]) == sorted(_ids(sweep["s1"]))
    assert meta["env"] == json.loads((out / "env.json").read_text()) == read_meta(sweep["s1"])["env"]
    assert (out / "suite.yaml").read_text() == (sweep["s1"] / "suite.yaml").read_text()
    assert not (out / OPS_FILE).exists()  # --no-profile: no op table in any shard
    assert not list(sweep["tmp"].glob(".merged*"))  # the temporary directory is gone
    # the merged run reads as any other run
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "report.html").stat().st_size > 10_000
    r = runner.invoke(app, ["analyze", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert isinstance(json.loads(r.stdout), list)
    r = runner.invoke(app, ["show", str(out)])
    assert r.exit_code == 0 and "sdpa_flash" in r.output


def test_merging_a_shard_with_the_full_run_keeps_each_point_once(sweep, tmp_path):
    r = _merge(sweep["full"], sweep["s2"], "-o", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    out = _json_out(r)
    n2 = len(_ids(sweep["s2"]))
    assert out["points"] == 4 and out["duplicates_dropped"] == n2 and out["dropped_from"] == {str(sweep["s2"]): n2}
    assert out["missing_shards"] == []  # a run without --shard holds every shard
    merged = load_points(tmp_path / "m").set_index("point_id")
    full = load_points(sweep["full"]).set_index("point_id")
    # the full run was given first, so its record of every point is kept
    assert list(merged["step_ms_median"]) == list(full.loc[merged.index, "step_ms_median"])


@pytest.mark.parametrize("bad", ["3/2", "0/2", "a/b", "2", "1/0", "-1/2", "1/2/3"])
def test_bad_shard_is_a_usage_error_before_anything_runs(write_suite, tmp_path, bad):
    r = runner.invoke(app, ["run", str(write_suite("tiny")), "--results-dir", str(tmp_path / "res"), "--shard", bad])
    assert r.exit_code == 2, r.output
    text = _flat(r.output)
    assert "--shard" in text and "1 <= K <= N" in text and "Traceback" not in r.output
    assert not (tmp_path / "res").exists()


def test_parse_shard():
    assert parse_shard("1/1") == (1, 1) and parse_shard("3/4") == (3, 4) and parse_shard(" 2 / 8 ") == (2, 8)
    for bad in ("4/3", "0/1", "x", "1/", "/2", "1.5/2"):
        with pytest.raises(ValueError, match="K"):
            parse_shard(bad)


def test_resume_with_another_shard_is_refused(sweep):
    suite, s1 = sweep["suite"], sweep["s1"]
    before = (s1 / POINTS_FILE).read_bytes()
    r = runner.invoke(app, ["run", str(suite), "--resume", str(s1), "--shard", "2/2", "--no-profile", "--no-report"])
    assert r.exit_code == 2, r.output
    text = _flat(r.output)
    assert "--shard" in text and "with --shard 1/2" in text and "not --shard 2/2" in text
    assert (s1 / POINTS_FILE).read_bytes() == before
    # a run started without --shard holds all points: resuming it as a shard is refused too ('latest' resolves it)
    r = runner.invoke(app, ["run", str(suite), "--results-dir", str(sweep["tmp"] / "full"), "--resume", "latest",
                            "--shard", "1/2", "--no-profile", "--no-report"])
    assert r.exit_code == 2, r.output
    assert "without --shard" in _flat(r.output) and str(sweep["full"]) in _flat(r.output)
    # the run's own shard resumes: nothing left to measure
    r = runner.invoke(app, ["run", str(suite), "--resume", str(s1), "--shard", "1/2", "--no-profile", "--no-report",
                            "--json"])
    assert r.exit_code == 0, r.output
    out = _json_out(r)
    assert out["measured"] == 0 and out["skipped"] == len(_ids(s1)) == out["points"]
    assert (s1 / POINTS_FILE).read_bytes() == before


# --------------------------------------------------------------------------------------------------------------------
# refusals and rules, on hand-made run directories


def _recs(*seq_lens, base_ms: float = 10.0, **kw) -> list[dict]:
    return [ok_record(point(t, **kw), steps(base_ms * t / 64, seed=t)) for t in seq_lens]


def _sharded_run(run_dir: Path, records: list[dict], shard: tuple[int, int], **kw) -> Path:
    """A hand-made run directory whose metadata says it is shard ``shard`` (as ``txbench run --shard`` stores it)."""
    write_run(run_dir, records, suite="handmade", **kw)
    meta = {k: v for k, v in read_meta(run_dir).items() if k != "schema_version"}
    write_points(run_dir / POINTS_FILE, records, {**meta, "shard": list(shard)})
    return run_dir


def test_runs_of_different_suites_are_refused_even_with_allow_mixed(tmp_path):
    a = write_run(tmp_path / "a", _recs(32), suite="alpha")
    b = write_run(tmp_path / "b", _recs(64), suite="beta")
    for extra in ([], ["--allow-mixed"]):
        r = _merge(a, b, "-o", tmp_path / "m", *extra)
        assert r.exit_code == 2, r.output
        text = _flat(r.output)
        assert "different suites" in text and "'alpha'" in text and "'beta'" in text and str(b) in text
    assert not (tmp_path / "m").exists()
    # same name, another resolved suite (e.g. a different --set on one shard): the place that differs is named
    c = write_run(tmp_path / "c", _recs(64), suite="alpha", description="another description")
    r = _merge(a, c, "-o", tmp_path / "m")
    assert r.exit_code == 2, r.output
    text = _flat(r.output)
    assert "different suite files" in text and "description" in text and str(a) in text and str(c) in text
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("what, kw, key", [
    ("devices", {"device": "cuda", "env": {"device": "cuda"}}, "device"),
    ("torch versions", {"env": {"torch_version": "2.12.0+cpu"}}, "torch"),
])
def test_mixed_device_or_torch_needs_allow_mixed(tmp_path, what, kw, key):
    a = write_run(tmp_path / "a", _recs(32, 64))
    b = write_run(tmp_path / "b", _recs(128), **kw)
    r = _merge(a, b, "-o", tmp_path / "m")
    assert r.exit_code == 2, r.output
    text = _flat(r.output)
    assert f"different {what}" in text and "--allow-mixed" in text and str(a) in text and str(b) in text
    assert not (tmp_path / "m").exists()
    r = _merge(a, b, "-o", tmp_path / "m", "--allow-mixed")
    assert r.exit_code == 0, r.output
    assert f"different {what}" in _flat(r.stderr) and "merged 3 points from 2 runs" in _flat(r.stdout)
    sources = read_meta(tmp_path / "m")["merged_from"]
    # each run's env is kept: the merged run says which machine measured what
    assert sources[0]["env"] == ENV and sources[1]["env"] == {**ENV, **kw.get("env", {})}
    assert len(sources[1]["point_ids"]) == 1 and len(_ids(tmp_path / "m")) == 3


def test_another_schema_version_is_refused_even_with_allow_mixed(tmp_path):
    a = write_run(tmp_path / "a", _recs(32))
    b = write_run(tmp_path / "b", _recs(64))
    write_points(b / POINTS_FILE, _recs(64), {"suite": "handmade", "run_id": "b", "device": "cpu", "env": ENV,
                                              "schema_version": 99})
    r = _merge(a, b, "-o", tmp_path / "m", "--allow-mixed")
    assert r.exit_code == 2, r.output
    assert "schema version 99" in _flat(r.output) and str(b) in _flat(r.output)
    assert not (tmp_path / "m").exists()


def test_a_point_in_several_runs_is_kept_once_with_its_own_ops(tmp_path):
    a = write_run(tmp_path / "a", _recs(32, 64, base_ms=10.0), ops=True)
    b = write_run(tmp_path / "b", _recs(64, 128, base_ms=20.0), ops=True)
    r = _merge(a, b, "-o", tmp_path / "ab")
    assert r.exit_code == 0, r.output
    text = _flat(r.output)
    assert "merged 3 points from 2 runs" in text and "1 duplicate record dropped" in text and f"1 from {b}" in text
    ids = _ids(tmp_path / "ab")
    assert len(ids) == 3 == len(set(ids))
    dup = point(64).point_id
    merged = load_points(tmp_path / "ab").set_index("point_id")
    first = load_points(a).set_index("point_id")
    assert merged.loc[dup, "step_ms_median"] == first.loc[dup, "step_ms_median"]  # the first run given wins
    # the op table holds each kept point's rows from the run its record came from, and no others
    ops = load_ops(tmp_path / "ab")
    want = load_ops(a)
    assert len(ops) == 3 * len(want) / 2
    got = ops[ops["point_id"] == dup].reset_index(drop=True)
    assert got.equals(want[want["point_id"] == dup].reset_index(drop=True))
    assert read_meta(tmp_path / "ab")["merged_from"][1]["point_ids"] == [point(128).point_id]
    # in the other order the other record wins
    r = _merge(b, a, "-o", tmp_path / "ba", "--json")
    assert r.exit_code == 0, r.output
    assert _json_out(r)["dropped_from"] == {str(a): 1}
    assert load_points(tmp_path / "ba").set_index("point_id").loc[dup, "step_ms_median"] == (
        load_points(b).set_index("point_id").loc[dup, "step_ms_median"])


def test_a_final_record_beats_an_unfinished_one(tmp_path):
    # a status outside STATUSES would be retried by --resume; a finished record of the point wins over it
    unfinished = {**_recs(64)[0], "status": "running", "step_ms_median": None}
    a = write_run(tmp_path / "a", [unfinished] + _recs(32))
    b = write_run(tmp_path / "b", _recs(64, base_ms=20.0))
    r = _merge(a, b, "-o", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    assert _json_out(r)["dropped_from"] == {str(a): 1}
    merged = load_points(tmp_path / "m").set_index("point_id")
    assert merged.loc[point(64).point_id, "status"] == "ok" and len(merged) == 2


def test_traces_of_kept_points_are_copied(tmp_path):
    def traced(run_dir, recs, body: bytes):
        recs = [{**r, "trace_path": f"traces/{r['point_id']}.json.gz"} for r in recs]
        write_run(run_dir, recs)
        (run_dir / "traces").mkdir()
        for r in recs:
            (run_dir / r["trace_path"]).write_bytes(body)
        return run_dir

    a = traced(tmp_path / "a", _recs(32, 64), b"from a")
    b = traced(tmp_path / "b", _recs(64, 128), b"from b")
    r = _merge(a, b, "-o", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    assert _json_out(r)["traces"] == 3
    traces = {p.name: p.read_bytes() for p in (tmp_path / "m" / "traces").iterdir()}
    assert traces == {f"{point(32).point_id}.json.gz": b"from a", f"{point(64).point_id}.json.gz": b"from a",
                      f"{point(128).point_id}.json.gz": b"from b"}


def test_output_must_be_new_or_empty(tmp_path):
    a = write_run(tmp_path / "a", _recs(32))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "points.parquet").write_bytes(b"measured data")
    r = _merge(a, "-o", taken)
    assert r.exit_code == 2, r.output
    assert "-o" in _flat(r.output) and str(taken) in _flat(r.output) and "never overwrites" in _flat(r.output)
    assert (taken / "points.parquet").read_bytes() == b"measured data"
    r = _merge(a, "-o", a)  # onto an input
    assert r.exit_code == 2 and _ids(a) == [point(32).point_id]
    (tmp_path / "file").write_text("x")
    assert _merge(a, "-o", tmp_path / "file").exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _merge(a, "-o", empty)
    assert r.exit_code == 0, r.output
    assert _ids(empty) == [point(32).point_id]


def test_missing_inputs_are_named(tmp_path):
    a = write_run(tmp_path / "a", _recs(32))
    r = _merge(a, tmp_path / "nope", "-o", tmp_path / "m")
    assert r.exit_code == 2 and str(tmp_path / "nope") in _flat(r.output) and "no such directory" in _flat(r.output)
    (tmp_path / "plain").mkdir()
    r = _merge(a, tmp_path / "plain", "-o", tmp_path / "m")
    assert r.exit_code == 2 and "not a txbench run directory" in _flat(r.output)
    r = _merge(a, a, "-o", tmp_path / "m")
    assert r.exit_code == 2 and "given twice" in _flat(r.output)
    assert not (tmp_path / "m").exists()


def test_missing_shards_are_a_warning(tmp_path):
    s1 = _sharded_run(tmp_path / "s1", _recs(32), (1, 3))
    s3 = _sharded_run(tmp_path / "s3", _recs(64), (3, 3))
    r = _merge(s1, s3, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert "missing shard 2/3" in _flat(r.stderr) and "merged 2 points from 2 runs" in _flat(r.stdout)
    r = _merge(s1, s3, "-o", tmp_path / "j", "--json")
    assert r.exit_code == 0 and _json_out(r)["missing_shards"] == [2] and _json_out(r)["shard_count"] == 3
    assert [m["shard"] for m in read_meta(tmp_path / "j")["merged_from"]] == [[1, 3], [3, 3]]
    # every shard present (shard 1 twice, e.g. a rerun): no warning
    s2 = _sharded_run(tmp_path / "s2", _recs(128), (2, 3))
    s1b = _sharded_run(tmp_path / "s1b", _recs(32, base_ms=30.0), (1, 3))
    r = _merge(s1, s2, s3, s1b, "-o", tmp_path / "all", "--json")
    assert r.exit_code == 0, r.output
    out = _json_out(r)
    assert out["missing_shards"] == [] and out["points"] == 3 and out["dropped_from"] == {str(s1b): 1}
    assert "missing" not in r.stderr


def test_shards_of_different_counts_need_allow_mixed(tmp_path):
    a = _sharded_run(tmp_path / "a", _recs(32), (1, 2))
    b = _sharded_run(tmp_path / "b", _recs(64), (2, 3))
    r = _merge(a, b, "-o", tmp_path / "m")
    assert r.exit_code == 2, r.output
    text = _flat(r.output)
    assert "different shard counts" in text and "1/2" in text and "2/3" in text and "--allow-mixed" in text
    r = _merge(a, b, "-o", tmp_path / "m", "--allow-mixed", "--json")
    assert r.exit_code == 0, r.output
    assert _json_out(r)["points"] == 2 and _json_out(r)["missing_shards"] == []


def test_merge_help_has_an_example_and_merge_never_imports_torch(tmp_path):
    r = runner.invoke(app, ["merge", "--help"])
    assert r.exit_code == 0 and "Example" in r.output and "txbench merge" in r.output
    a = write_run(tmp_path / "a", _recs(32), ops=True)
    b = write_run(tmp_path / "b", _recs(64), ops=True)
    code = ("import sys; from txbench.merge import merge_runs; import txbench.cli.merge; "
            f"merge_runs([{str(a)!r}, {str(b)!r}], {str(tmp_path / 'm')!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(op_rows(_recs(32, 64))) == len(load_ops(tmp_path / "m"))
