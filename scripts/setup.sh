#!/usr/bin/env bash
# Set up txbench on a fresh machine: torch (kept if already installed), txbench and,
# with --test, the test tools (pytest extras and Debian's chromium for the browser test).
#
#   bash scripts/setup.sh          # to run txbench
#   bash scripts/setup.sh --test   # to run its tests too
#
# torch: an installed torch (CUDA or CPU build) is never replaced. Without one, a GPU
# machine (nvidia-smi present) gets pip's default torch; a CPU-only machine gets
# torch==2.13.0 from the local wheel cache if pip's configuration offers one (a CPU
# build), else from $TXBENCH_TORCH_INDEX when set (for example PyTorch's CPU wheel
# index) so that no multi-GB CUDA build is pulled onto a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install -q --disable-pip-version-check)

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: installing torch (GPU machine)"
    "${PIP[@]}" torch
  elif [ -n "${TXBENCH_TORCH_INDEX:-}" ]; then
    echo "setup: installing torch==2.13.0 (CPU) from $TXBENCH_TORCH_INDEX"
    "${PIP[@]}" "torch==2.13.0" --index-url "$TXBENCH_TORCH_INDEX"
  else
    echo "setup: installing torch==2.13.0 (CPU build where the local wheel cache has one)"
    "${PIP[@]}" "torch==2.13.0"
  fi
fi

if [ "${1:-}" = "--test" ]; then
  "${PIP[@]}" -e ".[test]"
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the report's browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: chromium could not be installed; the browser test will be skipped"
  fi
else
  "${PIP[@]}" -e .
fi
# change points of `txbench history detect`: only otava.analysis is used (numpy + scipy, already here); --no-deps
# keeps its exact numpy/scipy pins and its BigQuery/Slack/Postgres clients off this machine (see pyproject.toml)
"${PIP[@]}" --no-deps "apache-otava==0.8.0"
"$PY" -c "import otava.analysis, duckdb" || { echo "setup: apache-otava or duckdb does not import"; exit 1; }
"$PY" -c "import torch, txbench; print(f'setup: txbench {txbench.__version__}, torch {torch.__version__}')"
