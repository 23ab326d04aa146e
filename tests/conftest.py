"""Shared fixtures: tiny configs and one trained tiny workdir reused by several tests."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import struct
import subprocess
import sys

import pytest

from seq2seq_jax.config import Config, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides) -> Config:
  config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
  return dataclasses.replace(config, **overrides)


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
