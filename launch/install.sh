#!/usr/bin/env bash
# Install collapse and everything it needs into the current Python (3.10+) environment.
#
# torch goes first and pinned: `torch==2.13.0` resolves to the local CPU wheel on these machines in
# seconds, while an unpinned torch (asked for by any other package) pulls a multi-GB CUDA build.
# On a GPU cluster set TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
echo "[install] $TORCH_SPEC"
$PY -m pip install -q $TORCH_SPEC
# DeepSpeed compiles its ops lazily at first use (DS_BUILD_OPS=0) against the torch just installed.
echo "[install] deepspeed"
DS_BUILD_OPS=0 $PY -m pip install -q --no-build-isolation "deepspeed>=0.15,<0.20"
echo "[install] collapse (editable) with test extras"
$PY -m pip install -q -e ".[dev]"
echo "[install] done: $($PY -c 'import collapse, torch, ray, transformers; print("collapse", collapse.__version__, "torch", torch.__version__, "ray", ray.__version__, "transformers", transformers.__version__)')"
