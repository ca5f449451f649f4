"""txbench's small JSON caches (the CPU GEMM peaks, the runner's between-run noise). No torch import.

They live in ``$TXBENCH_CACHE_DIR`` (default ``~/.cache/txbench``), one JSON object per file,
written atomically so that concurrent workers never read half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["cache_path", "read_json", "write_json"]


def cache_path(name: str) -> Path:
    """The path of cache file ``name`` under ``$TXBENCH_CACHE_DIR`` (default ``~/.cache/txbench``)."""
    return Path(os.environ.get("TXBENCH_CACHE_DIR") or Path.home() / ".cache" / "txbench") / name


def read_json(path: Path) -> dict:
    """The JSON object stored at ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict, default=None) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename); raises OSError.

    ``default`` turns what JSON cannot hold into what it can (``json.dumps``'s hook)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=default))
    os.replace(tmp, path)
    return path
