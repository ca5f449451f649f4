#!/usr/bin/env bash
# Set up (see scripts/setup.sh --test), lint with ruff (pyproject.toml), then run the whole test
# suite, CPU-only tests included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -x -k suite`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
python3 -m ruff check .
export TXBENCH_CACHE_DIR="${TXBENCH_CACHE_DIR:-$PWD/.pytest-cache-txbench}"
set +e
python3 -m pytest -q -ra "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
