"""Findings for distributed points (analysis.findings.parallel): scaling efficiency along world_size, ddp vs fsdp.

Every run here is hand-made with tests/factories: the step times are planted, so the efficiency and the ratios the
sentences state are known in advance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
from typer.testing import CliRunner

import txbench.cli  # noqa: F401  (registers every command on the app)
from tests.factories import failed_record, ok_record, point, write_run
from txbench.analysis import findings as F
from txbench.analysis.findings.parallel import efficiency_table, parallel_memory, scaling_efficiency
from txbench.cli.app import app

MiB = 2**20
runner = CliRunner()


def exact(median_ms: float, rel: float = 0.02, n: int = 41, key: str = "") -> list[float]:
    """``n`` step times whose median is exactly ``median_ms`` (log-normal spread ``rel``, seeded by ``key``)."""
    z = np.random.default_rng(zlib.crc32(f"{key}{median_ms}".encode())).standard_normal(n)
    return list(median_ms * np.exp(rel * (z - np.median(z))))


def rec(parallel: str = "none", world_size: int = 1, ms: float = 10.0, rel: float = 0.02, n: int = 41, **values):
    """An ok point of the factories' tiny model at ``parallel``/``world_size`` whose median step is ``ms``."""
    p = point(parallel=parallel, world_size=world_size, **values.pop("point_kw", {}))
    return ok_record(p, exact(ms, rel, n, key=f"{parallel}{world_size}{p.point_id}"), **values)


def comm(share=0.5, exposed=0.45, exposed_ms=9.0, skew=0.01, slowest=1) -> dict:
    """The profile and rank columns of an N-rank point."""
    return dict(comm_share=share, comm_exposed_share=exposed, comm_exposed_ms_per_step=exposed_ms, rank_skew=skew,
                slowest_rank=slowest)


def frame(*records) -> pd.DataFrame:
    return pd.DataFrame(list(records))


def only(found, rule="scaling_efficiency"):
    hits = [f for f in found if f.rule == rule]
    assert len(hits) == 1, [f.text for f in found]
    return hits[0]


def stat(f) -> dict:
    return next(e for e in f.evidence if "efficiency" in e)


# ---------------------------------------------------------------- scaling efficiency
def test_step_time_doubling_at_two_ranks_is_half_efficiency_waiting_for_communication():
    one = rec("ddp", 1, 10.0)
    two = rec("ddp", 2, 20.0, **comm(exposed=0.45),
              tokens_per_s=1.0)  # a wrong stored figure: the samples decide, not tokens_per_s
    pts = frame(rec("none", 1, 9.0), one, two)
    f = only(scaling_efficiency(pts))
    s = stat(f)
    assert s["efficiency"] == 0.5 and s["ci_low"] <= 0.5 <= s["ci_high"] and s["outcome"] == "b_better"
    assert s["ci_high"] < 0.7 and f.severity == "warning"
    assert f.point_ids == [one["point_id"], two["point_id"]]  # the same mode's 1-rank point, not parallel none
    assert f.text.startswith("ddp, 2 ranks: 50% scaling efficiency (95% CI ")
    # 128 tokens a rank: 2 x 128 in 20 ms against 128 in 10 ms
    assert "12.8k tok/s against 2 x 12.8k tok/s on 1 rank" in f.text
    assert ("Collectives run for 50% of the profiled step, 45% with nothing overlapping them "
            "(9 ms a step the ranks wait); the ranks differ by 1.0%." in f.text)
    assert "The step grew by 10 ms over the 1-rank step (50% of the 2-rank step)" in f.text
    assert "most of the lost time is waiting for communication" in f.text
    assert f.scope == {"parallel": "ddp", "world_size": 2}


def test_low_exposed_communication_does_not_blame_communication():
    pts = frame(rec("ddp", 1, 10.0), rec("ddp", 2, 20.0, **comm(share=0.3, exposed=0.05, skew=0.02)))
    f = only(scaling_efficiency(pts))
    assert "50% scaling efficiency" in f.text and "waiting for communication" not in f.text
    assert "exposed communication (5.0% of the profiled step) and the spread between ranks (2.0%)" in f.text
    assert "less than half of it" in f.text


def test_a_slow_rank_is_named_and_blamed_when_it_explains_the_loss():
    pts = frame(rec("ddp", 1, 10.0), rec("ddp", 2, 12.5, **comm(share=0.1, exposed=0.02, skew=0.15, slowest=1)))
    f = only(scaling_efficiency(pts))
    assert "80% scaling efficiency" in f.text
    assert "the ranks differ by 15% (rank 1 is the slowest)" in f.text
    assert "most of the lost time is the other ranks waiting for the slowest (rank 1)" in f.text


def test_equal_step_times_are_near_linear():
    pts = frame(rec("ddp", 1, 10.0), rec("ddp", 2, 10.0, **comm(share=0.2, exposed=0.01, skew=0.01)))
    f = only(scaling_efficiency(pts))
    assert stat(f)["outcome"] == "tie" and f.severity == "info"
    assert f.text.startswith("ddp, 2 ranks: near-linear scaling, 100% efficiency (95% CI ")
    assert "within ±5% of linear" in f.text and "25.6k tok/s against 2 x 12.8k tok/s on 1 rank" in f.text
    assert "grew" not in f.text and "waiting" not in f.text


def test_noisy_steps_are_not_called_linear():
    pts = frame(rec("ddp", 1, 10.0, rel=0.4, n=9), rec("ddp", 2, 11.0, rel=0.4, n=8, **comm()))
    f = only(scaling_efficiency(pts))
    assert "too noisy to tell it from linear" in f.text and "near-linear" not in f.text


def test_without_a_profile_the_profile_is_named():
    pts = frame(rec("ddp", 1, 10.0), rec("ddp", 2, 25.0))
    f = only(scaling_efficiency(pts))
    assert "40% scaling efficiency" in f.text and "Collectives" not in f.text
    assert "no profile" in f.text and "`txbench run --profile`" in f.text


def test_fallback_to_the_single_process_baseline():
    none = rec("none", 1, 10.0)
    fsdp = rec("fsdp", 2, 25.0, **comm())
    ddp = rec("ddp", 2, 12.0, **comm())
    found = {f.scope["parallel"]: f for f in scaling_efficiency(frame(none, fsdp, ddp))}
    assert found["ddp"].point_ids == [none["point_id"], ddp["point_id"]]  # every mode falls back to it
    f = found["fsdp"]
    assert f.point_ids == [none["point_id"], fsdp["point_id"]]
    assert f.text.startswith("fsdp, 2 ranks: 40% scaling efficiency")
    assert "in one process without data parallelism (parallel none)" in f.text


def test_no_baseline_says_to_add_world_size_one():
    pts = frame(rec("ddp", 2, 20.0, **comm()), rec("ddp", 4, 30.0, **comm()))
    f = only(scaling_efficiency(pts))
    assert "No scaling efficiency for ddp at 2 ranks and ddp at 4 ranks" in f.text
    assert "Add world_size 1 to the sweep (`--set sweep.world_size=[1,2,4]`" in f.text
    pairs, lonely = efficiency_table(pts)
    assert pairs == [] and len(lonely) == 2


def test_a_failed_baseline_is_named_instead_of_asking_for_it():
    pts = frame(rec("ddp", 2, 20.0), failed_record(point(parallel="ddp", world_size=1), "error"))
    f = only(scaling_efficiency(pts))
    assert "ended with status error" in f.text and "Add world_size 1" not in f.text


def test_efficiency_per_configuration_and_worst_first():
    pts = frame(*[rec(mode, w, ms, point_kw={"seq_len": t}, **({} if w == 1 else comm()))
                  for t, slow in ((64, 2.0), (128, 1.25)) for mode, w, ms in
                  (("ddp", 1, 10.0), ("ddp", 2, 10.0 * slow))])
    found = scaling_efficiency(pts)
    assert [f.text.split(":")[0] for f in found] == ["ddp, 2 ranks (T=64)", "ddp, 2 ranks (T=128)"]
    assert "50% scaling efficiency" in found[0].text and "80% scaling efficiency" in found[1].text


def test_single_process_runs_have_no_distributed_findings():
    pts = frame(rec("none", 1, 10.0, point_kw={"seq_len": 32}), rec("none", 1, 20.0, point_kw={"seq_len": 64}))
    assert scaling_efficiency(pts) == [] and parallel_memory(pts) == []
    old = pts.drop(columns=["parallel", "world_size"])  # a run stored before the fields existed
    assert scaling_efficiency(old) == [] and parallel_memory(old) == []


# ---------------------------------------------------------------- ddp against fsdp
def _mem(peak_mib, ranks_mib, shard):
    return dict(peak_mem_bytes=int(peak_mib * MiB), rank_peak_mem_bytes=[int(m * MiB) for m in ranks_mib],
                param_bytes=int(2 * MiB / shard), grad_bytes=int(2 * MiB / shard),
                optimizer_state_bytes=int(4 * MiB / shard))


def test_fsdp_against_ddp_memory_speed_and_shards():
    ddp = rec("ddp", 2, 32.0, **_mem(9.3, (9.3, 9.2), 1))
    fsdp = rec("fsdp", 2, 68.0, **_mem(7.2, (7.2, 7.1), 2))
    f = only(parallel_memory(frame(ddp, fsdp)), "parallel_memory")
    assert f.text.startswith("fsdp at 2 ranks holds 1.3x less peak memory per rank than ddp (7.2 MiB vs 9.3 MiB) "
                             "and is 2.1x (95% CI ")
    assert "slower (68 ms vs 32 ms a step)" in f.text
    assert ("Per rank fsdp keeps 1 MiB of parameters, 1 MiB of gradients and 2 MiB of optimizer state, against "
            "2 MiB, 2 MiB and 4 MiB under ddp (2.0x less" in f.text)
    assert "Use fsdp where the ddp batch does not fit" in f.text
    assert f.point_ids == [ddp["point_id"], fsdp["point_id"]] and f.chart == "memory:world_size"


def test_fsdp_and_ddp_at_equal_speed_tie_and_rank_peaks_are_shown_when_they_differ():
    ddp = rec("ddp", 2, 30.0, **_mem(9.3, (9.3, 9.2), 1))
    fsdp = rec("fsdp", 2, 30.0, **_mem(7.2, (7.2, 5.0), 2))
    f = only(parallel_memory(frame(ddp, fsdp)), "parallel_memory")
    assert "ties with it in speed within ±5%" in f.text and "slower" not in f.text
    assert "(7.2 MiB, ranks 5 MiB-7.2 MiB vs 9.3 MiB)" in f.text
    # a different world size is not a pair
    assert parallel_memory(frame(ddp, rec("fsdp", 4, 30.0, **_mem(5.0, (5.0,) * 4, 4)))) == []


# ---------------------------------------------------------------- the other rules on distributed runs
def test_saturation_states_global_tokens_of_a_distributed_point():
    pts = frame(*[rec("ddp", 2, ms, point_kw={"batch_size": b}) for b, ms in ((1, 10.0), (2, 20.0), (4, 40.0))])
    f = only(F.saturation(pts), "saturation")
    # 64 tokens a rank at B=1, two ranks, 10 ms: 12,800 tokens/s as the record's tokens_per_s counts them
    assert "B=1 (128 tokens per step over 2 ranks, 12,800 tokens/s) already saturates" in f.text


def test_phases_name_the_collectives_when_world_size_isolates_a_slow_backward():
    found = F.phases(frame(_phased("ddp", 1, 10.0, 0.55), _phased("ddp", 2, 20.0, 0.8)))
    f = next(x for x in found if "Backward takes" in x.text)
    assert "at W=2" in f.text and "Likely cause: with 2 ranks the backward holds the gradient collectives" in f.text
    # a run of 2-rank points only cannot isolate it, and says which sweep would
    alone = next(x for x in F.phases(frame(_phased("ddp", 2, 20.0, 0.8))) if "Backward takes" in x.text)
    assert "sweep world_size (`--set sweep.world_size=[1,2]`)" in alone.text


def test_winners_never_rank_across_parallel_modes():
    pts = frame(*[rec(mode, w, ms, point_kw={"attention": a})
                  for a, f in (("naive", 2.0), ("sdpa", 1.0)) for mode, w, ms in
                  (("none", 1, 10.0 * f), ("ddp", 2, 30.0 * f))])
    for f in F.winners(pts):
        assert ("ddp W=2" in f.text) != ("none W=1" in f.text), f.text  # one mode and rank count per sentence


def _phased(mode, w, ms, bwd, **values):
    """A point whose backward is ``bwd`` of each step (forward and optimizer split the rest 70/30)."""
    s = np.asarray(exact(ms, key=f"{mode}{w}"))
    fwd, b, opt = s * (1 - bwd) * 0.7, s * bwd, s * (1 - bwd) * 0.3
    return rec(mode, w, ms, fwd_ms_median=float(np.median(fwd)), bwd_ms_median=float(np.median(b)),
               opt_ms_median=float(np.median(opt)), fwd_ms_samples=list(fwd), bwd_ms_samples=list(b),
               opt_ms_samples=list(opt), torch_threads=1, **values)


def test_the_ddp_suite_layout_reads_as_documented():
    """suites/ddp.yaml's five points, hand-made: the example of docs/findings.md#distributed-points."""
    pts = frame(
        _phased("none", 1, 10.0, 0.6, **_mem(9.3, (9.3,), 1)),
        _phased("ddp", 1, 10.2, 0.6, **_mem(9.3, (9.3,), 1)),
        _phased("ddp", 2, 12.8, 0.72, **comm(share=0.4, exposed=0.16, exposed_ms=2.3), **_mem(9.3, (9.3, 9.2), 1)),
        _phased("fsdp", 1, 11.0, 0.6, **_mem(9.0, (9.0,), 1)),
        _phased("fsdp", 2, 21.5, 0.75, **comm(share=0.62, exposed=0.5, exposed_ms=12.1, skew=0.07, slowest=0),
                **_mem(7.2, (7.2, 7.1), 2)),
    )
    found = F.find(pts)
    text = "\n".join(f.text for f in found)
    assert [f.rule for f in found][:4] == ["scaling_efficiency", "phases", "scaling_efficiency", "parallel_memory"]
    assert "fsdp, 2 ranks: 51% scaling efficiency (95% CI 51-52%): 11.9k tok/s against 2 x 11.6k tok/s" in text
    assert "the ranks differ by 7.0% (rank 0 is the slowest)" in text
    assert "ddp, 2 ranks: 80% scaling efficiency (95% CI 79-80%): 20k tok/s against 2 x 12.5k tok/s on 1 rank" in text
    assert "(4.3x at fsdp W=2 against 2.1x at fsdp W=1; 3.7x at ddp W=2 against 2.1x at ddp W=1)" in text
    assert "fsdp at 1 rank holds about the same peak memory per rank as ddp (9 MiB vs 9.3 MiB)" in text


# ---------------------------------------------------------------- wiring
def test_find_and_the_cli_json_carry_the_rules(tmp_path):
    records = [rec("none", 1, 10.0), rec("ddp", 1, 10.0, **_mem(9.3, (9.3,), 1)),
               rec("ddp", 2, 20.0, **comm(), **_mem(9.3, (9.3, 9.3), 1)),
               rec("fsdp", 2, 40.0, **comm(), **_mem(7.2, (7.2, 7.2), 2))]
    rules = [f.rule for f in F.find(pd.DataFrame(records))]
    assert {"scaling_efficiency", "parallel_memory"} <= set(rules)
    run = write_run(tmp_path / "run", records, suite="ddp")
    r = runner.invoke(app, ["analyze", str(run), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    by_rule = {}
    for f in out:
        by_rule.setdefault(f["rule"], []).append(f)
    assert len(by_rule["scaling_efficiency"]) == 2 and len(by_rule["parallel_memory"]) == 1
    assert any("ddp, 2 ranks: 50% scaling efficiency" in f["text"] for f in by_rule["scaling_efficiency"])
    r = runner.invoke(app, ["analyze", str(run)], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "(scaling_efficiency)" in r.stdout and "(parallel_memory)" in r.stdout


def test_the_analysis_does_not_import_torch():
    code = ("import sys, txbench.analysis.findings.parallel, txbench.analysis.findings; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_contended_baseline_scales_nothing_and_is_named():
    pts = frame(rec("ddp", 2, 20.0, **comm()),
                rec("ddp", 1, 60.0, interference="contended", interference_reason="other processes held 1.2 cores"))
    found = F.find(pts)
    f = only(found)
    assert "No scaling efficiency for ddp at 2 ranks" in f.text
    assert "ended with status contended" in f.text and "Add world_size 1" not in f.text
    assert any(g.rule == "interference" and "other processes held 1.2 cores" in g.text for g in found)
