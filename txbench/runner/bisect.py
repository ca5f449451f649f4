"""``txbench bisect``: the first commit that made a suite slower, found with ``txbench ab`` in git worktrees.

The good revision is checked out once, in its own worktree, as every ab's
baseline; the candidate commits go through a second worktree. The first ab
confirms the regression (good against bad) and names the point that regressed
most; every later ab runs on that point only (or on ``--points``). Binary search
over the commits between them (``--ancestry-path``) then takes ceil(log2 N)
more ab calls for N commits, each at a threshold of half the confirmed change (at
least the given one): the question is whether a commit carries that regression.
The ab rules hold: an inconclusive step is retried once with twice the budget
and, still inconclusive, ends the search with the range narrowed so far; it never guesses.
Worktrees and their directory are removed on every way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from txbench.errors import TxbenchError
from txbench.runner.ab import AbConfig, SideSpec, run_ab

__all__ = ["BisectError", "BisectStep", "BisectResult", "resolve_range", "bisect", "worktrees"]


class BisectError(TxbenchError):
    """Bad revisions or repository (exit 2)."""


@dataclass
class BisectStep:
    commit: str
    verdict: str  # the ab verdict: "regression" (bad), "unchanged" or "improvement" (good), "inconclusive"
    ratio: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    max_s: float = 0.0
    points: list[str] = field(default_factory=list)
    run_dirs: dict = field(default_factory=dict)


@dataclass
class BisectResult:
    first_bad: str | None
    status: str  # "found", "not_reproduced", "inconclusive"
    good: str
    bad: str
    commits: list[str]
    steps: list[BisectStep]
    last_good: str
    wall_s: float

    def to_json(self) -> dict:
        return {"first_bad": self.first_bad, "status": self.status, "good": self.good, "bad": self.bad,
                "last_good": self.last_good, "commits": len(self.commits), "ab_calls": len(self.steps),
                "wall_s": round(self.wall_s, 1),
                "steps": [{"commit": s.commit, "verdict": s.verdict, "ratio": s.ratio, "ci_low": s.ci_low,
                           "ci_high": s.ci_high, "max_s": s.max_s, "points": s.points} for s in self.steps]}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def resolve_range(repo: Path, good: str, bad: str) -> tuple[str, str, list[str]]:
    """(good sha, bad sha, the commits after good up to and including bad, oldest first); checks both revisions
    and their order."""
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise BisectError(f"--repo {repo}: not a git repository")
    shas = {}
    for opt, rev in (("--good", good), ("--bad", bad)):
        out = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if out.returncode != 0:
            raise BisectError(f"{opt} {rev}: not a commit in {repo}")
        shas[opt] = out.stdout.strip()
    g, b = shas["--good"], shas["--bad"]
    if g == b:
        raise BisectError(f"--good {good} and --bad {bad} are the same commit")
    if _git(repo, "merge-base", "--is-ancestor", g, b).returncode != 0:
        hint = " (wrong order: --bad is older)" if _git(repo, "merge-base", "--is-ancestor", b, g).returncode == 0 \
            else " (they are on diverged branches)"
        raise BisectError(f"--good {good} is not an ancestor of --bad {bad}{hint}; give the older, good revision "
                          f"as --good")
    commits = _git(repo, "rev-list", "--reverse", "--ancestry-path", f"{g}..{b}").stdout.split()
    return g, b, commits


@contextlib.contextmanager
def worktrees(repo: Path):
    """A function ``add(name, sha) -> Path`` making detached worktrees of ``repo`` in a temporary directory; all
    removed on exit, whatever the exit (SIGTERM becomes KeyboardInterrupt meanwhile)."""
    base = Path(tempfile.mkdtemp(prefix="txbench-bisect-"))
    made: list[Path] = []

    def add(name: str, sha: str) -> Path:
        path = base / name
        if path in made:
            out = _git(path, "checkout", "--quiet", "--detach", "--force", sha)
        else:
            out = _git(repo, "worktree", "add", "--quiet", "--detach", str(path), sha)
            if out.returncode == 0:
                made.append(path)
        if out.returncode != 0:
            raise BisectError(f"git worktree for {sha[:12]}: {out.stderr.strip()}")
        return path

    old = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, _term)
    try:
        yield add
    finally:
        for path in made:
            _git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(base, ignore_errors=True)
        _git(repo, "worktree", "prune")
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _focus_sets(suite: Path, row: dict) -> list[str]:
    """Suite overrides that narrow every sweep axis to the value of ``row``'s point (empty when one cannot)."""
    try:
        sweep = (yaml.safe_load(Path(suite).read_text()) or {}).get("sweep") or {}
    except (OSError, yaml.YAMLError):
        return []
    sets = []
    for axis in sweep:
        if axis not in row:
            return []
        sets.append(f"sweep.{axis}=[{json.dumps(row[axis], default=str)}]")
    return sets


def _judge(frame, points: list[str] | None) -> tuple[str, dict | None]:
    """The verdict of one ab on the step time of ``points`` (all when None) and the row that decides it."""
    rows = frame[frame["metric"] == "step_ms"]
    if points:
        rows = rows[rows["point_id"].isin(points) | rows["label"].isin(points)]
    if not len(rows):
        return "inconclusive", None
    rows = rows.sort_values("ratio", ascending=False)
    reg = rows[rows["verdict"] == "regression"]
    if len(reg):
        return "regression", reg.iloc[0].to_dict()
    undecided = rows[rows["verdict"] == "inconclusive"]
    if len(undecided):
        return "inconclusive", undecided.iloc[0].to_dict()
    row = rows.iloc[0].to_dict()
    if row["verdict"] in ("unchanged", "improvement"):  # the commit does not carry the regression
        return str(row["verdict"]), row
    return "inconclusive", row  # skipped, not comparable (a failed point): never a guess


def bisect(suite, repo, good: str, bad: str, *, points: list[str] | None = None, cfg: AbConfig | None = None,
           results_dir="results", on_step=None) -> BisectResult:
    """Find the first commit between ``good`` and ``bad`` (revisions of ``repo``) whose suite is slower than at
    ``good``; see the module docstring. ``on_step(step)`` is called after each ab."""
    t0 = time.monotonic()
    repo = Path(repo).resolve()
    suite = Path(suite).resolve()
    cfg = cfg or AbConfig()
    g, b, commits = resolve_range(repo, good, bad)
    steps: list[BisectStep] = []
    with worktrees(repo) as add:
        base = add("good", g)

        def test(sha: str, pts: list[str] | None, sets: list[str]) -> tuple[str, dict | None]:
            cand = add("candidate", sha)
            verdict, row = "inconclusive", None
            for attempt in range(2):  # an inconclusive step once more with twice the budget, then as it is
                step_cfg = AbConfig(**{**cfg.__dict__, "max_s": cfg.max_s * (2 ** attempt)})
                res = run_ab(suite, SideSpec("baseline", path=base, sets=sets),
                             SideSpec("candidate", path=cand, sets=sets), step_cfg, results_dir=results_dir)
                verdict, row = _judge(res.frame, pts)
                step = BisectStep(sha, verdict, _f(row, "ratio"), _f(row, "ratio_ci_low"), _f(row, "ratio_ci_high"),
                                  step_cfg.max_s, [row["point_id"]] if row else [], res.run_dirs)
                steps.append(step)
                if on_step:
                    on_step(step)
                if verdict != "inconclusive":
                    break
            return verdict, row

        def done(first_bad, status, last_good):
            return BisectResult(first_bad, status, g, b, commits, steps, last_good, time.monotonic() - t0)

        verdict, row = test(b, points, [])
        if verdict != "regression":
            return done(None, "inconclusive" if verdict == "inconclusive" else "not_reproduced", g)
        # later steps ask "does this commit carry that regression?": a change under half the confirmed one (its CI's
        # low end) is not it, so the threshold grows to that and an unchanged commit is decided in a short budget
        lo_ratio = _f(row, "ratio_ci_low") or _f(row, "ratio") or 1.0
        cfg = AbConfig(**{**cfg.__dict__, "threshold": max(cfg.threshold, (lo_ratio - 1) / 2)})
        focus = points or [row["point_id"]]
        sets = [] if points else _focus_sets(suite, row)
        lo, hi = -1, len(commits) - 1  # commits[lo] good (-1: --good itself), commits[hi] bad
        while hi - lo > 1:
            mid = (lo + hi) // 2
            verdict, _ = test(commits[mid], focus, sets)
            if verdict == "regression":
                hi = mid
            elif verdict == "inconclusive":
                return done(None, "inconclusive", commits[lo] if lo >= 0 else g)
            else:
                lo = mid
        return done(commits[hi], "found", commits[lo] if lo >= 0 else g)


def _f(row: dict | None, key: str) -> float | None:
    v = (row or {}).get(key)
    try:
        return None if v is None or v != v else float(v)
    except (TypeError, ValueError):
        return None
