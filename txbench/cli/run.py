"""``txbench run``: sweep a suite, store the records, print the table and write the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from txbench.cli.app import EXIT_INTERRUPTED, app, console, err_console, handle_errors, print_all, term_width
from txbench.labels import fmt_bytes, fmt_ms, fmt_num
from txbench.report.terminal import interference_lines, points_table

SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a suite field, e.g. "
                 "[cyan]--set measure.max_s=5 --set sweep.seq_len=[128,256][/]."),
]


class _RichProgress:
    """Sweep callbacks drawing a rich progress bar with the current point and the last result."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.task = None
        self.last = ""

    def on_start(self, run_dir, total, done, todo):
        if self.quiet:
            return
        console.print(f"[bold]run directory[/] {run_dir}  ({total} points, {done} already done, {todo} to run)")
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[last]}"),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("points", total=total, completed=done, last="")

    def on_point_start(self, index, point):
        if self.progress:
            self.progress.update(self.task, description=point.label(), last=self.last)

    def on_point_end(self, index, point, rec):
        if rec.get("status") == "ok":
            self.last = (f"last: {fmt_ms(rec['step_ms_median'])} ms, {fmt_num(rec.get('tokens_per_s'))} tok/s, "
                         f"{fmt_bytes(rec.get('peak_mem_bytes'))}")
        else:
            self.last = f"last: [red]{rec.get('status')}[/]"
        if self.progress:
            self.progress.update(self.task, advance=1, last=self.last)

    def close(self):
        if self.progress:
            self.progress.update(self.task, description="done")
            self.progress.stop()


def _preflight(suite, quiet: bool) -> None:
    """``--check``: the doctor's checks for the suite's thread count; exit 1 before anything runs if one fails."""
    from txbench.cli.doctor import EXIT_CONTAMINATED, checks_table
    from txbench.doctor import is_contaminated, run_checks
    from txbench.host import cpu_cores

    threads = max((p.threads or len(cpu_cores()) for p in suite.points("cpu")), default=len(cpu_cores()))
    checks = run_checks(threads=threads, device=suite.device)
    bad = is_contaminated(checks)
    if bad or not quiet:
        for r in checks_table(checks):  # --json and --quiet keep stdout for their own output
            (err_console if quiet else console).print(r, width=term_width(), soft_wrap=False)
    if bad:
        err_console.print("--check: not started; stop the processes above or set threads in the suite, "
                          "or run without --check")
        raise typer.Exit(EXIT_CONTAMINATED)


@app.command()
@handle_errors
def run(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file, e.g. suites/seq_len.yaml.")],
    set_: SetOpt = None,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where run directories go.")] = Path("results"),
    resume: Annotated[
        Optional[str],
        typer.Option("--resume", help="Continue a run: a run directory, or 'latest' for this suite's newest run."),
    ] = None,
    profile: Annotated[
        bool, typer.Option("--profile/--no-profile", help="Run the torch.profiler pass after timing.")
    ] = True,
    trace: Annotated[bool, typer.Option("--trace", help="Keep a Chrome/Perfetto trace per point (large).")] = False,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write report.html into the run directory.")
    ] = True,
    isolate: Annotated[
        bool, typer.Option("--isolate", help="A fresh worker process per point (slower: torch import each time).")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress; only the run directory at the end.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary object on stdout, nothing else.")
    ] = False,
    tensorboard: Annotated[
        Optional[Path],
        typer.Option("--tensorboard", help="Also write the run for TensorBoard into this log directory "
                     "(as [cyan]txbench export --format tensorboard[/])."),
    ] = None,
    devices: Annotated[
        Optional[str],
        typer.Option("--devices", metavar="cuda:0,cuda:1|all", help="Run points on these CUDA devices at once, one "
                     "worker per device (a point with world_size N takes N of them); [cyan]all[/]: every GPU."),
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option("--shard", metavar="K/N", help="Run only shard K of N (1 <= K <= N): a stable 1/N of the points "
                     "by point id, for one job of an array job; join the shards with [cyan]txbench merge[/]."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Check the machine first ([cyan]txbench doctor[/]) and run nothing, "
                           "exit 1, when a run started now would be contaminated.")
    ] = False,
    history: Annotated[
        Optional[Path],
        typer.Option("--history", help="Also add the run to this history database (DuckDB, e.g. "
                     "results/history.duckdb), with the commit and branch of the suite's git checkout."),
    ] = None,
    commit: Annotated[
        Optional[str], typer.Option("--commit", help="With --history: the commit, where the suite's directory is "
                                    "not a git checkout.")
    ] = None,
    branch: Annotated[Optional[str], typer.Option("--branch", help="With --history: the branch.")] = None,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Store each point's pre-flight memory estimate (predicted_peak_bytes) "
                           "beside its measured peak ([cyan]txbench estimate[/]).")
    ] = False,
    skip_predicted_oom: Annotated[
        bool, typer.Option("--skip-predicted-oom", help="Do not run points predicted above the device's memory "
                           "(or measure.device_memory) by more than the estimate's 10% tolerance: they are stored "
                           "as predicted_oom.")
    ] = False,
):
    """Run a suite: every point in its worker, timed, profiled, stored in Parquet.

    Failures (OOM, unsupported, error, timeout) are recorded per point and the
    sweep goes on. Ctrl-C stops cleanly; continue with [cyan]--resume[/].
    [cyan]--shard K/N[/] runs one shard of the points (one job of an array job;
    docs/cluster.md); [cyan]txbench merge[/] joins the shards.

    Example: [cyan]txbench run suites/seq_len.yaml --set measure.max_s=5[/]
    """
    from txbench.runner.sweep import SweepInterrupted, run_suite
    from txbench.suite import load_suite

    shard_kn = _parse_shard_option(shard)
    device_list = None
    if devices is not None:
        from txbench.runner.sweep import parse_devices

        try:
            device_list = parse_devices(devices)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--devices") from None
    set_ = list(set_ or []) + (["measure.estimate=true"] if estimate else []) + (
        ["measure.skip_predicted_oom=true"] if skip_predicted_oom else [])
    s, resolved = load_suite(suite, set_)
    if tensorboard is not None:
        from txbench.export.tensorboard import _writer_class

        _writer_class()  # a missing tensorboard package is said before anything is measured
    if history is not None and commit is None:
        _check_history_commit(suite)
    if check:
        _preflight(s, quiet or as_json)
    resume_arg = True if resume in ("latest", "last") else (Path(resume) if resume else None)
    if resume_arg and shard_kn is not None:
        _check_resume_shard(resume_arg, results_dir, s.name, shard_kn)
    cb = _RichProgress(quiet=quiet or as_json)
    t0 = time.monotonic()
    interrupted = False
    try:
        result = run_suite(
            s, resolved, results_dir=results_dir, resume=resume_arg, profile=profile, trace=trace, isolate=isolate,
            callbacks=cb, shard=shard_kn, devices=device_list,
        )
    except SweepInterrupted as e:
        result, interrupted = e.result, True
    finally:
        cb.close()
    if history is not None and not interrupted:
        _add_to_history(result.run_dir, history, suite, commit, branch, quiet or as_json)
    report_path = None
    if report and not interrupted:
        report_path = _write_report(result.run_dir, quiet or as_json)
    tb_info = None
    if tensorboard is not None and not interrupted:
        from txbench.export.tensorboard import write_tensorboard

        tb_info = write_tensorboard(result.run_dir, tensorboard)
    import pandas as pd

    df = pd.DataFrame(result.records)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    if as_json:
        print(json.dumps({
            "run_dir": str(result.run_dir),
            "points": len(df),
            "status_counts": counts,
            "measured": result.measured,
            "skipped": result.skipped,
            "wall_s": round(time.monotonic() - t0, 3),
            "interrupted": interrupted,
            "report": str(report_path) if report_path else None,
            "tensorboard": tb_info["dir"] if tb_info else None,
        }))
    else:
        if not quiet and len(df):
            print_all(points_table(df, title=f"{s.name}: {len(df)} points", width=term_width())
                      + interference_lines(df))
        console.print(f"[bold]results[/]  {result.run_dir}")
        if not quiet:
            console.print("  " + ", ".join(f"{v} {k}" for k, v in counts.items()))
            if report_path:
                console.print(f"[bold]report[/]   {report_path}")
            if tb_info:
                console.print(f"[bold]tensorboard[/] {tb_info['dir']}  (tensorboard --logdir {tensorboard})")
            console.print(f"re-render: [cyan]txbench report {result.run_dir}[/]   "
                          f"findings: [cyan]txbench analyze {result.run_dir}[/]")
    if interrupted:
        err_console.print(f"interrupted; resume with: txbench run {suite} --resume {result.run_dir}")
        raise typer.Exit(EXIT_INTERRUPTED)


def _add_to_history(run_dir: Path, db: Path, suite: Path, commit: str | None, branch: str | None,
                    quiet: bool) -> None:
    from txbench.history import RunInfo, git_info, ingest

    g = git_info(suite, commit)
    info = RunInfo(commit=g.commit or commit, branch=branch or g.branch, commit_time=g.commit_time)
    res = ingest(db, [run_dir], info)
    page = _refresh_trend_page(db, [run_dir])
    if not quiet:
        console.print(f"[bold]history[/]  {db} ({len(res['added'])} run added; trends: {page})")


def _check_history_commit(suite: Path) -> None:
    """``--history`` without ``--commit`` needs a git checkout (the suite's or the current directory's): said
    before anything is measured."""
    from txbench.history import HistoryError, git_info

    if git_info(suite).commit is None and git_info(Path.cwd()).commit is None:
        raise HistoryError(f"--history: {suite.resolve().parent} is not in a git checkout, so the run's commit is "
                           "unknown; pass --commit SHA (and --branch NAME)")


def _refresh_trend_page(db: Path, run_dirs) -> Path:
    """Redraw the trend page next to the history database and link the runs to it."""
    from txbench.history.trend import default_report_path, link_runs, write_trend_report

    page = write_trend_report(db, default_report_path(db))
    link_runs(run_dirs, db, page)
    return page


def _parse_shard_option(text: str | None) -> tuple[int, int] | None:
    """``--shard K/N`` as ``(K, N)``, or a usage error (exit 2) naming the option before anything runs."""
    if text is None:
        return None
    from txbench.merge import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from None


def _check_resume_shard(resume_arg, results_dir: Path, suite_name: str, shard: tuple[int, int]) -> None:
    """Refuse ``--resume`` with a ``--shard`` other than the run's own (exit 2, both named).

    A resumed run keeps the shard it was started with (the sweep reads it from the run's metadata), so a
    different ``--shard`` would be silently ignored, or, on a run started without one, would leave a run
    whose points belong to no single shard. Without ``--shard`` a resume simply keeps the run's shard.
    """
    from txbench.merge import format_shard
    from txbench.store import POINTS_FILE, latest_run, read_meta
    from txbench.suite import slug

    run_dir = latest_run(results_dir, slug(suite_name)) if resume_arg is True else Path(resume_arg)
    if run_dir is None or not (Path(run_dir) / POINTS_FILE).exists():
        return  # the sweep says there is nothing to resume, in its own words
    old = read_meta(run_dir).get("shard")
    if old is None or tuple(old) != tuple(shard):
        started = "without --shard (all points)" if old is None else f"with --shard {format_shard(old)}"
        keep = "without --shard" if old is None else f"with --shard {format_shard(old)} or without --shard"
        raise typer.BadParameter(
            f"{format_shard(shard)}: {run_dir} was started {started}, not --shard {format_shard(shard)}; "
            f"resume it {keep}, or start a new run for shard {format_shard(shard)}",
            param_hint="--shard",
        )


def _write_report(run_dir: Path, quiet: bool) -> Path | None:
    from txbench.report.html import write_report

    out = run_dir / "report.html"
    write_report([run_dir], out)
    return out
