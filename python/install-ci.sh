#!/usr/bin/env bash
# Installs the Python side of the walkthrough and its tests: torch (used on
# the CPU only), numpy, scikit-learn, pytest, all pinned.
#
# PyPI's Linux torch wheel is linked against the CUDA libraries, and a plain
# `pip install torch` pulls ~2.8 GB of nvidia/triton wheels. We install with
# --no-deps from a closed, pinned list that keeps only the nvidia wheels
# whose shared objects torch's libraries actually link to (see
# requirements-ci.txt): ~2.5 GB download, ~4 GB on disk, ~45-50 s here.
# No CPU-only torch wheel for Linux x86_64 exists on PyPI itself, and the
# PyTorch download index is not reachable from CI.
#
# Idempotent: does nothing when the packages already import.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if "$PY" -c "import torch, numpy, sklearn, pytest" 2>/dev/null; then
  "$PY" -c "import torch, numpy, sklearn; print(f'python deps present: torch {torch.__version__}, numpy {numpy.__version__}, scikit-learn {sklearn.__version__}')"
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "python/requirements-ci.txt is for Linux x86_64; use: $PY -m pip install -r python/requirements.txt" >&2
     exit 1 ;;
esac

start=$(date +%s)
# --no-cache-dir: the wheels are ~2.5 GB, a second copy in ~/.cache is waste.
"$PY" -m pip install --no-cache-dir --no-deps --disable-pip-version-check -r python/requirements-ci.txt
"$PY" -c "import torch; torch.manual_seed(0); x = torch.randn(4, 3, requires_grad=True); (x @ x.T).sum().backward(); print(f'torch {torch.__version__} imports and trains on the CPU (CUDA available: {torch.cuda.is_available()})')"
echo "python deps installed in $(( $(date +%s) - start )) s"
