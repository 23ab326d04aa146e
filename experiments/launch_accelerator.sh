#!/usr/bin/env bash
# Train on a GPU or TPU host. JAX picks the accelerator up by itself once the matching
# jax build is installed:
#   GPU (CUDA 12/13):  pip install -U "jax[cuda12]"      TPU VM:  pip install -U "jax[tpu]"
# There lstm_impl=auto runs the LSTM layers through lax.scan, as everywhere (measured faster
# and right on an H200; cuDNN is withdrawn), and neither mimalloc nor the CPU device flags
# are used (docs/accelerators.md).
#
# Usage: experiments/launch_accelerator.sh [WORKDIR] [--set KEY=VALUE ...]
#        experiments/launch_accelerator.sh --check [OUTPUT_DIR]
#          the device check instead: the GPU tests, the default model trained with auto and
#          scan, a short benchmark (experiments/accelerator_check.sh; --help says what it needs)
set -euo pipefail
case "${1:-}" in
  -h|--help)  # the comment above, as the help
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"
    exit 0;;
  --check)
    shift
    exec "$(dirname "${BASH_SOURCE[0]}")/accelerator_check.sh" "$@";;
  --set|--set=*)  # no WORKDIR given: the default one
    set -- runs/accelerator "$@";;
  -*)  # not a workdir: it would train in a folder of that name
    echo "usage: experiments/launch_accelerator.sh [WORKDIR] [--set KEY=VALUE ...] | --check [OUTPUT_DIR] | --help (got: $1)" >&2
    exit 2;;
esac
WORKDIR=${1:-runs/accelerator}
shift || true
# Let XLA take GPU memory as it needs it instead of 75% up front (shared machines).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
# The CPU allocator trick (mimalloc) does not matter on an accelerator (runtime.py also
# leaves it out wherever a GPU/TPU backend is installed).
export SEQ2SEQ_JAX_MIMALLOC=0
python3 -c "import jax; print('devices:', jax.devices())"
# Accelerators want big batches: the per-step cost of a small LSTM step is launch
# overhead, so a 4x batch costs little more time. Scale the learning rate with care.
exec seq2seq-jax train --config configs/default.py --workdir "$WORKDIR" \
  --set batch_size=512 --set latent_dim=256 --set learning_rate=3e-3 "$@"
