#!/usr/bin/env bash
# The device check, one command on an NVIDIA GPU machine, offline: the GPU tests, the default
# model trained twice (lstm_impl=auto and lstm_impl=scan, side by side on the one GPU) with
# both test exact matches, and a short benchmark. Each phase runs under its own time limit
# and writes its report under the output directory as it goes. Meant to finish in 4 minutes
# on one H200 (its default limits add up to 4 min 10 s at most). Ctrl-C (or SIGTERM) stops
# every phase still running, each keeping what it wrote, and ends the check (exit 130).
#
# Usage: experiments/accelerator_check.sh [--help] [OUTPUT_DIR]   (from anywhere in the checkout)
#   OUTPUT_DIR     default runs/accelerator_check/<UTC date-time>; new or empty (a folder of
#                  an earlier check is refused: its trainings' results would be read as these)
#
# Needs: an NVIDIA GPU with its CUDA driver (nvidia-smi must run; without it the check stops
# at once with one line), and a Python 3.11+ interpreter whose JAX is a CUDA build with flax,
# optax, orbax-checkpoint, numpy, num2words, sacrebleu, sentencepiece, tqdm and pytest (torch
# and keras are used by the benchmark where present; missing ones are named in one line).
# The interpreter is $PYTHON when set, else the first python3 on PATH whose JAX sees a GPU. Such an interpreter installs nothing: the
# project runs from this source tree (PYTHONPATH). Only with ACCEL_INSTALL=1 and no such
# interpreter does it make a fresh virtual environment and install jax[$JAX_CUDA], PyTorch
# and this checkout from PyPI (network needed, ~10 GB of disk).
# Environment:
#   PYTHON             the interpreter to use (must have a CUDA JAX)
#   ACCEL_INSTALL=1    no such interpreter: install into ACCEL_VENV (default .venv-accelerator)
#   JAX_CUDA           the jax extra for ACCEL_INSTALL (default cuda12; cuda13 for CUDA 13)
#   ACCEL_WHEELS       a folder of wheels for the interpreter's Python version (fetched where PyPI
#                      is reachable: docs/accelerators.md lists them); those of packages it lacks,
#                      or has at an older version, are installed without network into
#                      OUTPUT_DIR/site-packages, behind this tree on PYTHONPATH (the others are
#                      skipped: wheels.log names them, and the installed ones' requirements
#                      the interpreter does not meet)
#   CHECK_TESTS        gpu (default: tests/test_cudnn.py, its GPU tests included) or all (the suite)
#   TEST_TIMEOUT       seconds one test may take (default 45, 120 with CHECK_TESTS=all: below
#                      the phase limit, so that one slow test cannot hide the others' results;
#                      needs pytest-timeout, else the phase limit alone applies)
#   TEST_WORKERS       pytest-xdist workers for CHECK_TESTS=all (default 6; none without xdist)
#   CHECK_PROBE=1      also run experiments/cudnn_probe.py beside the trainings (the withdrawn
#                      cuDNN path against the scan; cudnn_probe.json, cudnn_probe.log)
#   TESTS_LIMIT, TRAIN_LIMIT, BENCH_LIMIT, PROBE_LIMIT   each phase's limit in seconds
#                      (default 90, or 420 with CHECK_TESTS=all; 140, 80, 240)
#   CUDA_VISIBLE_DEVICES  the GPU used (default 0)
# Writes: nvidia-smi.txt, versions.txt, pytest.txt, train_auto.log, train_scan.log (and their
#   workdirs), trainings.txt, benchmark.json, benchmark.md, benchmark.log (each measurement
#   as it is taken), summary.txt.
# Exit status: 0 all passed; 1 a phase failed or ran out of time, or both trainings translate
#   badly (below 0.9 test exact match; one line saying so); 2 the machine lacks what it needs;
#   3 the two trainings disagree (one line saying so); 130 stopped by Ctrl-C or SIGTERM.
set -uo pipefail

fail() {
  echo "accelerator_check: $*" >&2
  exit 2
}

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ "${1:-}" == -* || $# -gt 1 ]]; then
  fail "usage: experiments/accelerator_check.sh [--help] [OUTPUT_DIR] (got: $*)"
fi

# What it needs, checked before anything is written (shell builtins only up to here).
if ! command -v nvidia-smi >/dev/null 2>&1; then
  fail "needs an NVIDIA GPU and its CUDA driver: nvidia-smi is not on PATH; nothing was installed."
fi
if ! gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
  fail "needs a working CUDA driver: nvidia-smi failed (${gpus%%$'\n'*}); nothing was installed."
fi

started_in=$(pwd)  # relative paths given (OUTPUT_DIR, PYTHON, ACCEL_VENV, ACCEL_WHEELS) are the caller's
for name in PYTHON ACCEL_VENV ACCEL_WHEELS; do
  value=${!name:-}
  if [[ -n "$value" && "$value" != /* && ( "$name" != PYTHON || "$value" == */* ) ]]; then
    printf -v "$name" '%s' "$started_in/$value"  # a bare PYTHON name is looked up on PATH
  fi
done
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
root=$(pwd)
out=${1:-runs/accelerator_check/$(date -u +%Y%m%d-%H%M%S)}  # the default: in the checkout
[[ -n "${1:-}" && "$1" != /* ]] && out=$started_in/$1
if [[ -e "$out" && ( ! -d "$out" || -n "$(ls -A "$out" 2>/dev/null)" ) ]]; then
  fail "the output directory $out is not a new or empty folder: give another (an earlier check's results would be read as this one's)."
fi
sees_gpu='import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)'
python=""
if [[ -n "${PYTHON:-}" ]]; then
  "$PYTHON" -c "$sees_gpu" >/dev/null 2>&1 ||
    fail "PYTHON=$PYTHON has no JAX that sees a GPU (a CUDA build: pip install 'jax[cuda12]')."
  python=$PYTHON
else
  for candidate in $(type -ap python3); do
    if "$candidate" -c "$sees_gpu" >/dev/null 2>&1; then
      python=$candidate
      break
    fi
  done
fi
if [[ -z "$python" && "${ACCEL_INSTALL:-0}" != 1 ]]; then
  fail "no python3 here has a JAX that sees the GPU: set PYTHON to one, or ACCEL_INSTALL=1 to install jax[cuda12] and PyTorch into a fresh venv (network needed)."
fi

mkdir -p "$out" || fail "cannot make the output directory $out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
phase_start=$SECONDS
phase() {  # phase NAME STATUS: one line of the summary with the seconds since the last one
  note "$(printf '%-28s %-9s %4ds' "$1" "$2" $((SECONDS - phase_start)))"
  phase_start=$SECONDS
}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export PYTHONUNBUFFERED=1
{ echo "$gpus"; echo; nvidia-smi; } >"$out/nvidia-smi.txt" 2>&1
note "accelerator_check: $(echo "$gpus" | head -1); output in $out"

if [[ -z "$python" ]]; then  # ACCEL_INSTALL=1
  venv=${ACCEL_VENV:-$root/.venv-accelerator}
  echo "installing jax[${JAX_CUDA:-cuda12}], PyTorch and this checkout into a fresh $venv ..." >&2
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "could not make the venv $venv"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  # PyTorch first (it pins its CUDA libraries exactly); jax's CUDA plugin asks lower bounds
  "${pip[@]}" torch || fail "could not install PyTorch (above)."
  "${pip[@]}" "jax[${JAX_CUDA:-cuda12}]" || fail "could not install jax[${JAX_CUDA:-cuda12}] (above)."
  "${pip[@]}" -e "$root[dev,bench]" || fail "could not install this checkout (above)."
  python=$venv/bin/python
  phase install done
fi
# the project from this tree, before anything installed of it; then the carried wheels
site=""
if [[ -n "${ACCEL_WHEELS:-}" ]]; then
  compgen -G "$ACCEL_WHEELS/*.whl" >/dev/null || fail "ACCEL_WHEELS=$ACCEL_WHEELS holds no .whl files."
  # only the wheels of packages the interpreter lacks or has older: on PYTHONPATH a carried
  # package shadows the interpreter's own (a carried keras over the machine's keras)
  listed=$("$python" - "$ACCEL_WHEELS"/*.whl 2>>"$out/wheels.log" <<'EOF'
import importlib.metadata as metadata, os, sys
try:
  from packaging.version import Version
except ImportError:  # pip's own copy, where the interpreter has no packaging
  from pip._vendor.packaging.version import Version
for wheel in sys.argv[1:]:
  base = os.path.basename(wheel)
  try:
    name, version = base.split("-")[:2]
    have = metadata.version(name)
  except metadata.PackageNotFoundError:
    print(wheel)
    continue
  except Exception as error:  # a file not named as a wheel is: said, and left out
    print(f"skipped {base}: not a wheel's name ({error})", file=sys.stderr)
    continue
  try:  # public versions: a carried torch+cpu is not newer than the machine's CUDA torch
    newer = Version(version).release > Version(have).release
  except Exception:  # a version packaging cannot read: the carried wheel is taken
    newer = True
  print(f"{'installing' if newer else 'skipped'} {base}: the interpreter has {name} {have}",
        file=sys.stderr)
  if newer:
    print(wheel)
EOF
  ) || fail "could not read which wheels of ACCEL_WHEELS=$ACCEL_WHEELS the interpreter lacks: see $out/wheels.log"
  lacking=()
  while IFS= read -r wheel; do [[ -n $wheel ]] && lacking+=("$wheel"); done <<<"$listed"
  if (( ${#lacking[@]} )); then
    site=$out/site-packages
    "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
      --upgrade --target "$site" "${lacking[@]}" >>"$out/wheels.log" 2>&1 ||
      fail "could not install the wheels of ACCEL_WHEELS=$ACCEL_WHEELS: see $out/wheels.log"
    # installed without their dependencies (--no-deps: nothing to fetch them from): a newer
    # carried wheel may need newer packages than the interpreter's; each unmet one is named
    unmet=$("$python" - "$site" 2>>"$out/wheels.log" <<'EOF'
import importlib.metadata as metadata, sys
try:
  from packaging.requirements import Requirement
except ImportError:
  from pip._vendor.packaging.requirements import Requirement
site = sys.argv[1]
sys.path.insert(0, site)  # a carried wheel may meet another's requirement
unmet = 0
for dist in metadata.distributions(path=[site]):
  for line in dist.requires or ():
    try:
      need = Requirement(line)
      if need.marker is not None and not need.marker.evaluate({"extra": ""}):
        continue  # another platform's, or an extra's
      have = metadata.version(need.name)
    except metadata.PackageNotFoundError:
      have = None
    except Exception as error:  # a requirement packaging cannot read: said, not judged
      print(f"requirement of {dist.metadata['Name']} not read: {line!r} ({error})", file=sys.stderr)
      continue
    if have is None or (need.specifier and not need.specifier.contains(have, prereleases=True)):
      unmet += 1
      print(f"unmet: {dist.metadata['Name']} {dist.version} needs {need}; the interpreter "
            f"has {have or 'none'}: carry its wheel too", file=sys.stderr)
print(unmet)
EOF
    ) || unmet="?"
  fi
  carried=$(compgen -G "$ACCEL_WHEELS/*.whl" | wc -l)
  phase "wheels (${#lacking[@]} of $carried$( (( ${#lacking[@]} < carried )) && echo "; the interpreter has the rest at the same or a newer version")$( [[ ${unmet:-0} != 0 ]] && echo "; requirements unmet: ${unmet}, see wheels.log"))" installed
fi
export PYTHONPATH="$root${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
s2s=("$python" -m seq2seq_jax)

"$python" - >"$out/versions.txt" 2>&1 <<'EOF' || fail "the interpreter lacks $(tail -n 1 "$out/versions.txt"): carry their wheels (ACCEL_WHEELS; docs/accelerators.md lists them); see $out/versions.txt"
import importlib.metadata as metadata, importlib.util, sys
import jax
print("python", sys.version.split()[0], sys.executable)
print("jax", jax.__version__, jax.devices())
for name in ("jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "num2words", "sacrebleu",
             "sentencepiece", "tqdm", "pytest", "pytest-timeout", "pytest-xdist", "torch", "keras",
             "optuna", "starlette", "uvicorn", "httpx", "hypothesis", "tensorboardX"):
  try:
    print(name, metadata.version(name))
  except metadata.PackageNotFoundError:
    print(name, "missing")
needed = ("flax", "optax", "orbax.checkpoint", "num2words", "sacrebleu", "sentencepiece", "tqdm",
          "pytest")
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
  print(" ".join(missing))  # the last line: the script's message names them
  sys.exit(1)
import seq2seq_jax
print("seq2seq_jax from", seq2seq_jax.__file__)
EOF
phase "devices seen" ok
status=0

# Every phase runs in the background under `timeout` (its own process group, which a Ctrl-C
# at the terminal does not reach) and is waited for: a Ctrl-C or SIGTERM to the script ends
# the wait at once, and the trap hands the signal to each phase still running (timeout
# passes it on to the command, which keeps what it wrote) before the check ends.
phases=()
stop() {
  trap - INT TERM
  local pid
  for pid in ${phases[@]+"${phases[@]}"}; do  # (bash before 4.4: an empty array is unset)
    kill -INT "$pid" 2>/dev/null
  done
  wait
  note "stopped by $1 after $SECONDS s; what the phases wrote is in $out"
  exit 130
}
trap 'stop Ctrl-C' INT
trap 'stop SIGTERM' TERM
waited() {  # waited PID: its exit status
  local rc=0
  wait "$1" || rc=$?
  return $rc
}

# --- the trainings start first and run beside the tests: the GPU has room for all ---------
train() {  # train IMPL: the default config, workdir and log under $out (exec: $! is timeout's)
  exec timeout --signal=INT --kill-after=10 "${TRAIN_LIMIT:-140}" "${s2s[@]}" train \
    --workdir "$out/train_$1" --set "lstm_impl=$1" >"$out/train_$1.log" 2>&1
}
train auto & auto_pid=$!
train scan & scan_pid=$!
phases+=("$auto_pid" "$scan_pid")
probe_pid=""
if [[ "${CHECK_PROBE:-0}" == 1 ]]; then
  timeout --kill-after=10 "${PROBE_LIMIT:-240}" "$python" experiments/cudnn_probe.py \
    --output "$out/cudnn_probe.json" >"$out/cudnn_probe.log" 2>&1 & probe_pid=$!
  phases+=("$probe_pid")
fi

# pytest's options stated here, not pyproject's addopts (-n 2 needs pytest-xdist): one line a
# test as it ends, the failures' messages at the end, and SIGINT at the phase limit, on which
# pytest still prints the failures so far
pytest_args=(-o addopts= -v -rfEs --tb=short -p no:cacheprovider)
if [[ "${CHECK_TESTS:-gpu}" == all ]]; then
  tests=(tests); tests_limit=${TESTS_LIMIT:-420}; test_timeout=${TEST_TIMEOUT:-120}
  if "$python" -c "import xdist" >/dev/null 2>&1; then  # the host's cores share the one GPU
    pytest_args+=(-n "${TEST_WORKERS:-6}" --dist loadgroup)
  fi
else
  tests=(tests/test_cudnn.py); tests_limit=${TESTS_LIMIT:-90}; test_timeout=${TEST_TIMEOUT:-45}
fi
if "$python" -c "import pytest_timeout" >/dev/null 2>&1; then
  pytest_args+=(-p timeout --timeout "$test_timeout")
fi
timeout --signal=INT --kill-after=20 "$tests_limit" "$python" -m pytest "${tests[@]}" \
  "${pytest_args[@]}" >"$out/pytest.txt" 2>&1 & tests_pid=$!
phases+=("$tests_pid")
test_rc=0
waited "$tests_pid" || test_rc=$?
case $test_rc in
  0) phase "tests (${CHECK_TESTS:-gpu})" passed ;;
  124|137) phase "tests (${CHECK_TESTS:-gpu})" TIMEOUT; status=1 ;;
  *) phase "tests (${CHECK_TESTS:-gpu})" FAILED; status=1 ;;
esac
grep -E "[0-9]+ (passed|failed|error)|no tests ran" "$out/pytest.txt" | tail -n 1 | tee -a "$summary"
grep -E "^(FAILED|ERROR) " "$out/pytest.txt" | cut -c1-200 | tee -a "$summary"
auto_rc=0; scan_rc=0
waited "$auto_pid" || auto_rc=$?
waited "$scan_pid" || scan_rc=$?
exact() {  # the test exact match of a finished training, or "none" (no number: null, NaN)
  "$python" -c 'import json, math, sys
try:
  value = json.load(open(sys.argv[1]))["test/exact_match"]
  print(value if isinstance(value, (int, float)) and math.isfinite(value) else "none")
except (OSError, KeyError, ValueError, TypeError):
  print("none")' "$out/train_$1/results.json"
}
auto_em=$(exact auto); scan_em=$(exact scan)
if [[ -n "$probe_pid" ]]; then
  probe_rc=0
  waited "$probe_pid" || probe_rc=$?
  phase "cuDNN probe" "$([[ $probe_rc == 0 ]] && echo done || echo "FAILED($probe_rc)")"
fi
echo "lstm_impl=auto test exact match $auto_em (exit $auto_rc); lstm_impl=scan $scan_em (exit $scan_rc)" \
  | tee "$out/trainings.txt" | tee -a "$summary"
# each training's CPU cross-check (before its first step): what it measured, or its error
grep -h "CPU cross-check" "$out/train_auto.log" "$out/train_scan.log" 2>/dev/null \
  | tee -a "$out/trainings.txt" | tee -a "$summary" || true
verdict=""  # the trainings' one line, when they are wrong
if [[ $auto_em == none || $scan_em == none ]]; then
  phase trainings FAILED; status=1
  tail -n 3 "$out/train_auto.log" "$out/train_scan.log" >&2
else
  verdict=$("$python" -c 'import sys
a, b = map(float, sys.argv[1:])
print("disagree" if abs(a - b) > 0.02 else "bad" if min(a, b) < 0.9 else "agree")' \
    "$auto_em" "$scan_em") || verdict=""
  case $verdict in
    agree) phase trainings agree ;;
    disagree) phase trainings DISAGREE ;;
    bad) phase trainings "BOTH BAD"; status=1 ;;
    *) phase trainings FAILED; status=1 ;;  # not judged: say so, never "agree"
  esac
fi

# the report's tables on stdout (benchmark.md, written at the end), its JSON by --output, and
# each measurement as it is taken in benchmark.log
timeout --signal=INT --kill-after=10 "${BENCH_LIMIT:-80}" "${s2s[@]}" benchmark --rounds 1 \
  --batches 256,4096 --decode-batches 64,4096 --allocator system \
  --output "$out/benchmark.json" >"$out/benchmark.md" 2>"$out/benchmark.log" & bench_pid=$!
phases+=("$bench_pid")
bench_rc=0
waited "$bench_pid" || bench_rc=$?
if [[ $bench_rc == 0 ]]; then
  phase benchmark done
else
  phase benchmark "$([[ $bench_rc == 124 || $bench_rc == 137 ]] && echo TIMEOUT || echo FAILED)"
  tail -n 3 "$out/benchmark.log" >&2
  status=1
fi
note "total $SECONDS s; reports in $out"
logs="logs: $out/train_auto.log, $out/train_scan.log"
if [[ $verdict == disagree ]]; then
  echo "accelerator_check: the two trainings disagree: lstm_impl=auto test exact match $auto_em, lstm_impl=scan $scan_em ($logs)." >&2
  exit 3
elif [[ $verdict == bad ]]; then
  echo "accelerator_check: both trainings translate badly: lstm_impl=auto test exact match $auto_em, lstm_impl=scan $scan_em, below 0.9 ($logs)." >&2
  exit 1
fi
exit $status
