"""Shared fixtures: tiny points and suites that run in seconds on a 2-core CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # the measured CPU GEMM peak is cached per machine; share one cache across the session
    if "TXBENCH_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("TXBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "txbench-cache"))
    monkeypatch.delenv("TXBENCH_FAULT", raising=False)


@pytest.fixture
def quick_measure():
    from txbench import MeasureConfig

    return MeasureConfig(warmup_s=0.0, warmup_min_steps=1, min_steps=3, max_steps=5, max_s=2.0, profile_steps=0)


def tiny_suite_yaml(name: str = "tiny", **over) -> str:
    """A 4-point fp32 suite (seq_len 32/64 x naive/sdpa_flash) with short measure settings."""
    import yaml

    suite = {
        "name": name,
        "description": "tiny test suite",
        "device": "cpu",
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 128},
        "measure": {
            "warmup_s": 0.0, "warmup_min_steps": 1, "min_steps": 3, "max_steps": 5, "max_s": 1.0, "profile_steps": 1,
            "timeout_s": 60,
        },
        "sweep": {"seq_len": [32, 64], "batch_size": [2], "precision": ["fp32"], "attention": ["naive", "sdpa_flash"]},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(suite.get(k), dict):
            suite[k].update(v)
        else:
            suite[k] = v
    return yaml.safe_dump(suite, sort_keys=False)


@pytest.fixture
def write_suite(tmp_path):
    def _write(name: str = "tiny", **over) -> Path:
        p = tmp_path / f"{name}.yaml"
        p.write_text(tiny_suite_yaml(name, **over))
        return p

    return _write
