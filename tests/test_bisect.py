"""`txbench bisect` on a tiny repository built here: a factory model, one commit of which plants a slowdown."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from txbench.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

MODEL = '''
import time

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, vocab, d):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.out = nn.Linear(d, vocab)

    def forward(self, input_ids, labels):
        if SLEEP_S:
            time.sleep(SLEEP_S)
        logits = self.out(self.emb(input_ids))  # (B, T, V)
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())


def build(point):
    return Tiny(point.model.vocab_size, point.model.d_model)
'''


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo, msg, sleep_s=0.0, extra=None):
    (repo / "tinymodel.py").write_text(f"SLEEP_S = {sleep_s}\n" + MODEL)
    if extra:
        (repo / "notes.txt").write_text(extra)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", msg)
    return _git(repo, "rev-parse", "HEAD")


def make_repo(tmp_path, n=4, slow_at=2):
    """A repository of ``n`` commits whose model sleeps 20 ms per step from commit ``slow_at`` on."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    suite = {"name": "bis", "device": "cpu",
             "model": {"arch": "factory", "factory": "tinymodel:build", "d_model": 16, "vocab_size": 64},
             "measure": {"warmup_s": 0.1, "warmup_min_steps": 2, "timeout_s": 120},
             "sweep": {"seq_len": [16], "batch_size": [2], "threads": [1]}}
    (repo / "suite.yaml").write_text(yaml.safe_dump(suite))
    shas = [_commit(repo, f"commit {i}", 0.02 if i >= slow_at else 0.0, extra=f"{i}") for i in range(n)]
    return repo, shas


def _worktrees(repo) -> list[str]:
    return [ln for ln in _git(repo, "worktree", "list", "--porcelain").splitlines() if ln.startswith("worktree ")]


def test_bisect_finds_the_planted_commit_within_the_ab_budget(tmp_path):
    repo, shas = make_repo(tmp_path, n=4, slow_at=2)
    res = runner.invoke(app, ["bisect", str(repo / "suite.yaml"), "--good", shas[0], "--bad", shas[-1], "--repo",
                              str(repo), "--max-s", "6", "--results-dir", str(tmp_path / "results"),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout[res.stdout.index("{"):])
    assert body["first_bad"] == shas[2]
    commits = len(shas) - 1
    assert len(body["steps"]) <= math.ceil(math.log2(commits)) + 1
    assert body["steps"][0]["commit"] == shas[-1] and body["steps"][0]["verdict"] == "regression"
    assert all(s["verdict"] in ("regression", "unchanged", "improvement") for s in body["steps"])
    assert all(s["ratio"] > 1.5 for s in body["steps"] if s["verdict"] == "regression")
    assert len(_worktrees(repo)) == 1  # only the repository itself


def test_bisect_bad_revisions_are_exit_2(tmp_path):
    repo, shas = make_repo(tmp_path, n=2, slow_at=1)
    cases = {("--good", "nope", "--bad", shas[1]): "--good nope: not a commit",
             ("--good", shas[1], "--bad", shas[0]): "wrong order",
             ("--good", shas[0], "--bad", shas[0]): "same commit"}
    for args, msg in cases.items():
        res = runner.invoke(app, ["bisect", str(repo / "suite.yaml"), *args, "--repo", str(repo)])
        assert res.exit_code == 2, res.output
        assert msg in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["bisect", str(repo / "suite.yaml"), "--good", "a", "--bad", "b", "--repo",
                              str(tmp_path)])
    assert res.exit_code == 2 and "not a git repository" in res.output


def test_an_interrupted_bisect_removes_its_worktrees(tmp_path):
    repo, shas = make_repo(tmp_path, n=3, slow_at=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "txbench", "bisect", str(repo / "suite.yaml"), "--good", shas[0],
                             "--bad", shas[-1], "--repo", str(repo), "--max-s", "30", "--results-dir",
                             str(tmp_path / "results")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_worktrees(repo)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        made = [ln.split(" ", 1)[1] for ln in _worktrees(repo)[1:]]
        assert len(made) == 2, "the bisect never made its worktrees"
        time.sleep(2)  # inside the ab
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert len(_worktrees(repo)) == 1
    assert not any(Path(p).exists() for p in made)
    assert not Path(made[0]).parent.exists()
