#!/usr/bin/env bash
# The device check, one command on an NVIDIA GPU machine: installs JAX's CUDA build
# (jax[cuda12] at the version of this checkout's .venv) and PyTorch's CUDA build into a fresh
# virtual environment, runs the GPU tests (tests/test_cudnn.py and any test marked gpu) and
# `seq2seq-jax benchmark --json`, and writes everything under one directory.
#
# Needs: an NVIDIA GPU with its CUDA driver (nvidia-smi must run), Python 3.11+ (python3, or
# $PYTHON), network access to PyPI, about 10 GB of disk for the environment. Without a working
# nvidia-smi it stops at once with one line and installs nothing. Meant to finish within
# 8 minutes on one GPU, most of it the installs (not yet timed on a GPU: none was available).
#
# Usage: experiments/accelerator_check.sh [OUTPUT_DIR]     (from anywhere in the checkout)
#   OUTPUT_DIR     default runs/accelerator_check/<UTC date-time>
# Environment:
#   PYTHON         the interpreter that makes the venv (default python3)
#   ACCEL_VENV     the fresh venv, replaced on every run (default .venv-accelerator in the checkout)
#   JAX_VERSION    default: the jax version of the checkout's .venv (else the newest)
#   JAX_CUDA       the jax extra (default cuda12; cuda13 for a CUDA 13 driver)
#   TORCH_INDEX_URL  a PyTorch wheel index, e.g. https://download.pytorch.org/whl/cu126
#                  (default PyPI, whose Linux torch wheels are CUDA builds)
#   BENCH_ROUNDS   benchmark rounds (default 3, to fit the 8 minutes; the CPU figures use 5)
#   CUDA_VISIBLE_DEVICES  the GPU the tests and the benchmark use (default 0: the first one)
# Writes: nvidia-smi.txt, versions.txt, pytest.txt, benchmark.json (the report), benchmark.md
#   (its tables), benchmark.log (progress), summary.txt (what passed, how long each part took).
set -euo pipefail

fail() {
  echo "accelerator_check: $*" >&2
  exit 2
}

# What it needs, checked before anything is installed (shell builtins only up to here).
if ! command -v nvidia-smi >/dev/null 2>&1; then
  fail "needs an NVIDIA GPU and its CUDA driver: nvidia-smi is not on PATH; nothing was installed."
fi
if ! gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
  fail "needs a working CUDA driver: nvidia-smi failed (${gpus%%$'\n'*}); nothing was installed."
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
out=${1:-runs/accelerator_check/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
python=${PYTHON:-python3}
venv=${ACCEL_VENV:-$root/.venv-accelerator}
jax_cuda=${JAX_CUDA:-cuda12}
rounds=${BENCH_ROUNDS:-3}
jax_version=${JAX_VERSION:-}
if [[ -z "$jax_version" && -x "$root/.venv/bin/python" ]]; then
  jax_version=$("$root/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('jax'))" 2>/dev/null || true)
fi
jax_spec="jax[$jax_cuda]${jax_version:+==$jax_version}"
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
phase_start=$SECONDS
phase() {  # phase NAME STATUS: one line of the summary with the seconds since the last one
  note "$(printf '%-28s %-8s %4ds' "$1" "$2" $((SECONDS - phase_start)))"
  phase_start=$SECONDS
}

export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
# one GPU: lstm_impl=auto runs cuDNN on one device (several would be data parallel, the scan)
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
{ echo "$gpus"; echo; nvidia-smi; } >"$out/nvidia-smi.txt" 2>&1 || true
note "accelerator_check: $(echo "$gpus" | head -1); output in $out"

echo "installing $jax_spec and PyTorch's CUDA build into a fresh $venv ..." >&2
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# PyTorch first (it pins its CUDA libraries exactly); jax's CUDA plugin asks lower bounds of them
"${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch || fail "could not install PyTorch (above)."
"${pip[@]}" "$jax_spec" || fail "could not install $jax_spec (above)."
"${pip[@]}" -e "$root[dev,bench]" || fail "could not install this checkout (above)."
phase install done

"$venv/bin/python" - >"$out/versions.txt" 2>&1 <<'EOF' || fail "the installed JAX or PyTorch sees no GPU: see $out/versions.txt"
import jax, torch
print("jax", jax.__version__, jax.devices())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert jax.default_backend() == "gpu", f"JAX runs on {jax.default_backend()}"
assert torch.cuda.is_available(), "PyTorch has no CUDA device"
EOF
"$venv/bin/python" -m pip freeze >>"$out/versions.txt" 2>&1 || true
phase "devices seen" ok

status=0
if "$venv/bin/python" -m pytest tests/test_cudnn.py -q -rs -p no:cacheprovider >"$out/pytest.txt" 2>&1; then
  phase "tests/test_cudnn.py" passed
else
  phase "tests/test_cudnn.py" FAILED
  status=1
fi
gpu_rc=0
"$venv/bin/python" -m pytest tests -m gpu -q -rs -p no:cacheprovider >>"$out/pytest.txt" 2>&1 || gpu_rc=$?
case $gpu_rc in
  0) phase "tests marked gpu" passed ;;
  5) phase "tests marked gpu" none ;;  # pytest: no test collected
  *) phase "tests marked gpu" FAILED; status=1 ;;
esac

if "$venv/bin/seq2seq-jax" benchmark --json --rounds "$rounds" --output "$out/benchmark.json" \
    >/dev/null 2>"$out/benchmark.log"; then
  "$venv/bin/python" -c 'import json, sys
from seq2seq_jax.bench.report import format_report
print(format_report(json.load(open(sys.argv[1]))))' "$out/benchmark.json" >"$out/benchmark.md"
  phase benchmark done
else
  phase benchmark FAILED
  tail -5 "$out/benchmark.log" >&2
  status=1
fi
note "total $SECONDS s; the report: $out/benchmark.json (tables: $out/benchmark.md)"
exit $status
