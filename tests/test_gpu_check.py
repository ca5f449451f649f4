"""The GPU check (benchmarks/gpu_check.sh) rehearsed on CPU, as CI runs it, and its kernel-names files.

One ``--dry-run`` of the whole check runs once for the module (about a minute on 2 cores); the
tests read what it left in its output folder. ``load_kernel_names`` is the loader of the
kernel-names JSON that the check writes (``gpu_kernel_names.json``) and that, recorded on a GPU,
is committed as ``tests/data/gpu_kernels_by_attention.json``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from txbench.opclass import CATEGORIES, VERIFIABLE, verify_attention

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
RECORDED = REPO / "tests" / "data" / "gpu_kernels_by_attention.json"
FORMAT = "txbench-kernel-names/1"
COLUMNS = ["category", "region", "fwd_name", "name"]  # as tests/data/gpu_kernel_names.txt


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GC = _gpu_check()


def _none(v: str) -> str | None:
    return None if v == "-" else v


def load_kernel_names(path) -> tuple[str, dict]:
    """``(device, {implementation: {"points": [...], "rows": [(category, region, fwd_name, name), ...]}})``.

    Rows have the shape of tests/data/gpu_kernel_names.txt's (``-`` read as None). Raises
    ValueError for a file that is not a kernel-names file of this format.
    """
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT or doc.get("columns") != COLUMNS:
        raise ValueError(f"{path}: not a {FORMAT} file (format {doc.get('format')!r}, columns {doc.get('columns')!r})")
    if doc.get("device") not in ("cpu", "cuda"):
        raise ValueError(f"{path}: unknown device {doc.get('device')!r}")
    out = {}
    for impl, entry in doc["implementations"].items():
        rows = []
        for row in entry["kernels"] + entry["attention_ops"]:
            if len(row) != 4 or row[0] not in CATEGORIES or not row[3]:
                raise ValueError(f"{path}: {impl}: bad row {row!r}")
            rows.append((row[0], _none(row[1]), _none(row[2]), row[3]))
        if not entry["points"]:
            raise ValueError(f"{path}: {impl}: no points")
        out[impl] = {"points": entry["points"], "rows": rows, "n_kernels": len(entry["kernels"])}
    return doc["device"], out


def kernel_name_problems(impls: dict) -> list[str]:
    """Where txbench's attention check over the recorded names disagrees with what the run recorded."""
    problems = []
    for impl, e in impls.items():
        requested = impl.split(":", 1)[-1]  # "hf:sdpa_flash" -> "sdpa_flash"
        ok = [p for p in e["points"] if p["status"] == "ok"]
        if not ok:
            if e["rows"]:
                problems.append(f"{impl}: kernel rows but no ok point")
            continue
        names = sorted({r[3] for r in e["rows"]})
        kernel, verified = verify_attention(requested, names)
        recorded = {p["attention_kernel"] for p in ok}
        if len(recorded) == 1 and kernel not in recorded:
            problems.append(f"{impl}: the names say {kernel}, the run recorded {recorded.pop()}")
        if requested in VERIFIABLE and all(p["attention_verified"] is True for p in ok) and verified is not True:
            problems.append(f"{impl}: verified in the run, not from the recorded names ({kernel})")
    return problems


# --------------------------------------------------------------------------- without running anything


@pytest.mark.parametrize("suite", sorted((REPO / "benchmarks" / "gpu_check").glob("*.yaml")), ids=lambda p: p.stem)
def test_gpu_sized_suites_validate(suite):
    from txbench.suite import load_suite

    s, _ = load_suite(suite, None)
    assert s.device == "cuda"
    assert s.points("cuda")


def test_loader_rejects_what_is_not_a_kernel_names_file(tmp_path):
    good = {"format": FORMAT, "columns": COLUMNS, "device": "cuda", "implementations": {
        "sdpa_flash": {"points": [{"seq_len": 1024, "status": "ok", "attention_kernel": "sdpa_flash",
                                   "attention_verified": True}],
                       "kernels": [["attention", "attention", "-", "void pytorch_flash::flash_fwd_kernel<>"]],
                       "attention_ops": []}}}
    path = tmp_path / "k.json"
    path.write_text(json.dumps(good))
    device, impls = load_kernel_names(path)
    assert device == "cuda" and impls["sdpa_flash"]["rows"][0][1:3] == ("attention", None)
    assert kernel_name_problems(impls) == []
    for bad in ({"format": "other/1"}, {"columns": ["name"]}, {"device": "tpu"}):
        path.write_text(json.dumps({**good, **bad}))
        with pytest.raises(ValueError):
            load_kernel_names(path)
    good["implementations"]["sdpa_flash"]["kernels"][0][0] = "no_such_category"
    path.write_text(json.dumps(good))
    with pytest.raises(ValueError, match="bad row"):
        load_kernel_names(path)


def test_problems_name_a_backend_the_names_do_not_show():
    impls = {"sdpa_cudnn": {"points": [{"status": "ok", "attention_kernel": "sdpa_cudnn", "attention_verified": True}],
                            "rows": [("attention", "attention", None, "void pytorch_flash::flash_fwd_kernel<>")]}}
    problems = kernel_name_problems(impls)
    assert len(problems) == 2 and "sdpa_flash" in problems[0]


def test_first_error_line_is_the_exception_message():
    log = "Traceback (most recent call last):\n  File \"x.py\", line 1\ntorch.OutOfMemoryError: CUDA out of memory.\n"
    assert GC.first_error_line(log) == "torch.OutOfMemoryError: CUDA out of memory."
    assert GC.first_error_line("warming up\nstill going\n") == "still going"


@pytest.mark.skipif(torch.cuda.is_available(), reason="here a GPU run would run the real check")
def test_gpu_run_without_cuda_says_so_and_exits_2(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for _, title, *_ in GC.STEPS:
        assert f"[SKIPPED] {title}" in summary and "needs CUDA" in summary


# --------------------------------------------------------------------------- the dry run


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True, timeout=1500)
    return proc, out



@pytest.mark.slow
def test_dry_run_exits_0_and_names_every_step_with_a_status(dry):
    proc, out = dry
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert proc.stdout == summary  # printed at the end, and kept
    for _, title, *_ in GC.STEPS:
        m = re.search(rf"^\[(\w+) *\] {re.escape(title)} ", summary, re.M)
        assert m, f"step {title!r} missing from the summary"
        assert m.group(1).lower() in GC.STATUSES
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert {k for k, *_ in GC.STEPS} == set(steps)
    assert not [k for k, r in steps.items() if r["status"] in ("error", "fail")]
    # what only a GPU can do is said, not silently left out
    assert steps["pytest"]["status"] == "skipped" and "needs CUDA" in steps["pytest"]["reason"]
    assert "do_bench: skipped: needs CUDA" in summary and "GPU busy/idle and kernel launches: skipped" in summary
    # the machine's state and each timed block's interference are part of the check
    assert re.search(r"interference (none|dropped_blocks|contended): \d+ blocks", summary), summary
    assert steps["list"]["data"]["doctor"]


@pytest.mark.slow
def test_dry_run_leaves_at_most_8_plain_files_under_16_mib(dry):
    _, out = dry
    entries = list(out.iterdir())
    assert all(p.is_file() for p in entries), [p.name for p in entries if not p.is_file()]
    assert 6 <= len(entries) <= GC.MAX_FILES
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in entries)
    assert all(p.stat().st_size <= 16 * 2**20 for p in entries)
    with tarfile.open(out / GC.ARCHIVE) as tar:
        names = tar.getnames()
    for suite in ("sweep", "hf", "mfu", "oom", "profile"):
        assert any(re.search(rf"results/{suite}/gpu_check_{suite}/[^/]+/points\.parquet$", n) for n in names), suite
    assert any(n.endswith("logs/pytest.log") for n in names)


@pytest.mark.slow
def test_dry_run_results_parquet_and_report(dry):
    from txbench.store import load_ops, load_points

    _, out = dry
    pts = load_points(out / "points.parquet")
    assert set(pts["attention"]) == set(GC.SWEEP_ATTENTIONS)
    assert set(pts["status"]) <= {"ok", "unsupported"}
    assert (pts.loc[pts["status"] == "unsupported", "error"].str.len() > 0).all()  # a typed status has its reason
    forced_ok = pts[(pts["status"] == "ok") & pts["attention"].isin(GC.FORCED)]
    assert len(forced_ok) >= 2 and forced_ok["attention_verified"].eq(True).all()
    assert len(load_ops(out / "ops.parquet"))
    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "sdpa_flash" in html
    steps = json.loads((out / "summary.json").read_text())["steps"]
    oom = steps["oom"]["data"]["points"]
    assert [p["status"] for p in oom] == ["oom", "ok"]
    assert (out / GC.TRACE).stat().st_size > 1000


@pytest.mark.slow
def test_dry_run_kernel_names_load_and_agree_with_the_run(dry):
    _, out = dry
    device, impls = load_kernel_names(out / GC.KERNELS_JSON)
    assert device == "cpu"
    assert set(GC.SWEEP_ATTENTIONS) <= set(impls)
    assert {"hf:sdpa_flash", "hf:flash_attention_2"} <= set(impls)
    assert impls["sdpa_flash"]["rows"] and not impls["sdpa_cudnn"]["rows"]
    assert kernel_name_problems(impls) == []


def test_recorded_gpu_kernel_names_agree_with_txbench():
    if not RECORDED.exists():
        pytest.skip(f"no recorded GPU fixture yet: run bash benchmarks/gpu_check.sh OUT on a GPU and copy "
                    f"OUT/{GC.KERNELS_JSON} to {RECORDED.relative_to(REPO)}")
    device, impls = load_kernel_names(RECORDED)
    assert device == "cuda"
    assert kernel_name_problems(impls) == []
    assert any(e["n_kernels"] for e in impls.values())
