#!/usr/bin/env bash
# txbench's GPU check in one command (see benchmarks/gpu_check.py for the steps).
#   bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--budget-s S]
# On a machine whose Python lacks some of txbench's dependencies (plotly, pydantic), put their
# wheels in .whl/ first (bash ../shared/tools/device-wheels.sh downloads them); they are
# installed into /tmp/site for this run only. Exit code: the check's (0: no step failed).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--budget-s S]" >&2
  exit 2
fi
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu_check.sh: installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
