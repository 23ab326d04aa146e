"""Shared fixtures: tiny configs and one trained tiny workdir reused by several tests."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import warnings

import pytest

from seq2seq_jax.config import Config, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One XLA compilation cache for the whole run: the tests train the same tiny programs many
# times, in pytest's workers and in the commands they start (which inherit the environment),
# and a program compiled once loads from disk afterwards. The cache's size limit turns on
# its file locks (filelock), so concurrent processes never read a half-written entry.
# A cache hit runs the very executable a compilation would give: no result changes.
_CACHE_ENV = {"JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
# And the tests' programs compile with XLA's backend optimisations off: a third less time
# per tiny program; what the tests compare (losses, translations, parity) is unchanged.
_FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
_made_cache_dir: str | None = None


def pytest_configure(config):
  """In the controlling process (before xdist starts its workers, and before anything imports
  jax, which reads these variables when imported): float32 matmuls at full precision and a
  fresh cache directory."""
  global _made_cache_dir
  # float32 in the tests means float32: their comparisons' tolerances are float32's. JAX's
  # default precision rounds float32 matmul inputs to TF32 (10-bit mantissa) on NVIDIA GPUs,
  # which broke four comparisons by 1e-2 relative on one H200; "highest" is float32 there
  # and changes nothing on a CPU (the same losses and metrics to the bit). The commands users
  # run keep JAX's default; a precision the user sets is kept.
  os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
  # A suite started in the background of a script (`.ci/run &`, nohup) inherits an ignored
  # SIGINT, which the commands keep ignored, as nohup asks: the tests of Ctrl-C (in this
  # process, its xdist workers and the commands they start) then saw nothing happen. They
  # test a process that receives it.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # a worker inherits the controller's; a directory set by the user is kept
  _made_cache_dir = tempfile.mkdtemp(prefix="seq2seq_jax_tests_xla_cache_")
  os.environ.update(_CACHE_ENV, JAX_COMPILATION_CACHE_DIR=_made_cache_dir)
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {_FAST_COMPILE_FLAG}".strip()


def pytest_unconfigure(config):
  if _made_cache_dir is not None:
    shutil.rmtree(_made_cache_dir, ignore_errors=True)


def cli_env_for_long_runs() -> dict[str, str]:
  """`run_cli`'s env_extra for a command that mostly runs (thousands of steps) rather than
  compiles: XLA's default backend optimisation, which halves its running time there."""
  flags = os.environ.get("XLA_FLAGS", "").replace(_FAST_COMPILE_FLAG, "")
  return {"XLA_FLAGS": " ".join(flags.split())}


# The fixtures that train before their tests (10-20 s each). pytest-xdist builds a fixture
# in every worker that runs one of its tests: the tests of each of these go to one worker
# together (`--dist loadgroup` in pyproject.toml), which builds it once.
SHARED_TRAINED_FIXTURES = ("trained_workdir", "baseline", "swept", "one_device")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the tests' ids
def pytest_collection_modifyitems(items):
  for item in items:
    shared = [name for name in SHARED_TRAINED_FIXTURES if name in item.fixturenames]
    if shared:
      item.add_marker(pytest.mark.xdist_group(shared[0]))


@pytest.hookimpl(trylast=True)  # after xdist has put (or not) each test's group in its id
def pytest_collection_finish(session):
  """Says so where the groups did not take (a pytest that pytest-xdist cannot group in)."""
  if not getattr(session.config.option, "loadgroup", False):
    return  # not an xdist worker of a --dist loadgroup run (-n 0 runs in one process)
  lost = [item.nodeid for item in session.items
          if any(item.iter_markers("xdist_group")) and "@" not in item.nodeid]
  if lost:
    warnings.warn(pytest.PytestWarning(
        f"the tests that share a fixture that trains are not grouped on one worker ({len(lost)} "
        f"tests; pytest-xdist#1386 with pytest {pytest.__version__}): each such fixture trains "
        "once per worker; install pytest<9.2"))


def tiny_config(**overrides) -> Config:
  config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
  return dataclasses.replace(config, **overrides)


def jit_apply(model, params, *args, method: str | None = None, **static):
  """model.apply({"params": params}, *args, method=method, **static), compiled as one
  program (once per model, method, static arguments and shapes): run op by op, as a plain
  apply is, every new shape compiles each operation again, seconds a test on a CPU."""
  return _jit_apply()(params, *args, model=model, method=method,
                      static=tuple(sorted(static.items())))


@functools.cache
def _jit_apply():
  import jax  # not at this module's import: pytest_configure sets jax's environment first

  @functools.partial(jax.jit, static_argnames=("model", "method", "static"))
  def apply(params, *args, model, method, static):
    return model.apply({"params": params}, *args, method=method, **dict(static))

  return apply


def run_cli(*args, input_text: str | None = None, env_extra: dict | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs `python -m seq2seq_jax ARGS` in a fresh process."""
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "seq2seq_jax", *args], input=input_text,
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def cli_in_process(capsys, *argv):
  """(return code, stdout, stderr) of cli.main in this process (no re-exec).

  Log handlers that the command adds (to the captured stdout, to a tmp train.log)
  are removed afterwards, so later tests do not write to closed streams.
  """
  logger = logging.getLogger("seq2seq_jax")
  handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
  try:
    from seq2seq_jax import cli
    code = cli.main(list(argv))
  finally:
    for handler in [h for h in logger.handlers if h not in handlers]:
      logger.removeHandler(handler)
      handler.close()
    logger.setLevel(level)
    logger.propagate = propagate
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def write_tsv(path, pairs) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for source, target in pairs:
      f.write(f"{source}\t{target}\n")
  return str(path)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """configs/tiny.py trained by the command line in a fresh process."""
  workdir = tmp_path_factory.mktemp("tiny") / "run"
  result = run_cli("train", "--config", "configs/tiny.py", "--workdir", str(workdir))
  assert result.returncode == 0, result.stdout + result.stderr
  return str(workdir)


def tree_digest(path) -> str:
  """SHA-256 over every file's relative path and bytes under path: equal means untouched."""
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def event_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the TensorBoard event files directly in logdir."""
  from tensorboardX.proto import event_pb2
  scalars: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(logdir)):
    if not name.startswith("events.out.tfevents"):
      continue
    with open(os.path.join(logdir, name), "rb") as f:
      while header := f.read(12):
        (length,) = struct.unpack("<Q", header[:8])
        event = event_pb2.Event.FromString(f.read(length))
        f.read(4)
        for value in event.summary.value:
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars
