"""Checkpointer: retention from the project's own manifests, workdirs of 0.1, nothing
changed process-wide by importing it, and clean exits of commands that fail early."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from seq2seq_jax.checkpoint import MANIFEST, Checkpointer
from seq2seq_jax.errors import CheckpointError
from tests.conftest import ROOT, tree_digest

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "workdir_0.1")


def small_state(value):
  return {"w": np.full((4,), value, np.float32), "step": np.int32(value)}


def step_dirs(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def manifest_of(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), MANIFEST)) as f:
    return json.load(f)


@pytest.fixture
def captured_warnings():
  messages: list[str] = []

  class Collect(logging.Handler):
    def emit(self, record):
      messages.append(record.getMessage())

  logger = logging.getLogger("seq2seq_jax")
  handler, level = Collect(level=logging.DEBUG), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  yield messages
  logger.removeHandler(handler)
  logger.setLevel(level)


# ---------------------------------------------------------------------------
# Importing the library changes nothing process-wide
# ---------------------------------------------------------------------------

SNAPSHOT = r"""
import json, logging, sys, warnings
# third-party packages first: what they do on import is theirs, not ours
import jax, numpy, optax, flax, orbax.checkpoint
from jax._src import monitoring

def snapshot():
  return {
      "levels": {name: logging.getLogger(name).level
                 for name in ("", "absl", "orbax", "asyncio", "jax")},
      "handlers": {name: len(logging.getLogger(name).handlers) for name in ("", "absl", "orbax")},
      "unraisablehook": id(sys.unraisablehook),
      "asyncio_filters": [repr(f) for f in logging.getLogger("asyncio").filters],
      "warnings_filters": [repr(f) for f in warnings.filters],
      "monitoring_listeners": {
          kind: [repr(listener) for listener in getter()]
          for kind, getter in (("event", monitoring.get_event_listeners),
                               ("duration", monitoring.get_event_duration_listeners),
                               ("time_span", monitoring.get_event_time_span_listeners),
                               ("scalar", monitoring.get_scalar_listeners))},
  }

before = snapshot()
import pkgutil, importlib
import seq2seq_jax
for module in pkgutil.walk_packages(seq2seq_jax.__path__, "seq2seq_jax."):
  if not module.name.startswith(("seq2seq_jax.bench", "seq2seq_jax.configs", "seq2seq_jax.__main__")):
    importlib.import_module(module.name)  # every library module
print(json.dumps({"before": before, "after": snapshot()}))
"""


@pytest.fixture(scope="module")
def import_snapshots():
  result = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("aspect", ["levels", "handlers", "unraisablehook", "asyncio_filters",
                                    "warnings_filters"])
def test_importing_the_library_changes_nothing_process_wide(import_snapshots, aspect):
  assert import_snapshots["after"][aspect] == import_snapshots["before"][aspect]


def test_importing_the_library_registers_no_jax_monitoring_listener(import_snapshots):
  after, before = import_snapshots["after"], import_snapshots["before"]
  assert after["monitoring_listeners"] == before["monitoring_listeners"]


def test_the_command_line_quiets_orbax_once_and_leaves_jax_unloaded():
  """cli.main calls quiet_orbax_background_errors before it may re-execute itself, which
  it does only while JAX is not loaded; a second call changes nothing more."""
  script = r"""
import json, logging, sys, warnings
import seq2seq_jax.cli
from seq2seq_jax.checkpoint import quiet_orbax_background_errors
hook, filters = sys.unraisablehook, len(warnings.filters)
quiet_orbax_background_errors()
first = (sys.unraisablehook, len(warnings.filters), len(logging.getLogger("asyncio").filters))
quiet_orbax_background_errors()
again = (sys.unraisablehook, len(warnings.filters), len(logging.getLogger("asyncio").filters))
print(json.dumps({"jax": "jax" in sys.modules or "orbax.checkpoint" in sys.modules,
                  "changed": first[0] is not hook and first[1] == filters + 1,
                  "absl": logging.getLogger("absl").level, "same": first == again}))
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stderr
  seen = json.loads(result.stdout)
  assert seen == {"jax": False, "changed": True, "absl": logging.ERROR, "same": True}


def test_saving_and_restoring_leave_the_root_logger_to_the_program(tmp_path):
  """absl, which Orbax logs through, calls logging.basicConfig() on a root logger without
  handlers: a notebook that saved or loaded a checkpoint got absl's handler, and its own
  basicConfig(...) afterwards did nothing. Now the program configures logging itself."""
  script = r"""
import json, logging, sys
import jax.numpy as jnp
from seq2seq_jax.checkpoint import Checkpointer
checkpointer = Checkpointer(sys.argv[1], keep=2, best_metric="val/loss")
checkpointer.save(1, {"step": jnp.ones((), jnp.int32), "w": jnp.arange(3.0)}, {"n": 1})
checkpointer.close()
reader = Checkpointer(sys.argv[1], best_metric="val/loss", read_only=True)
state, meta, step = reader.restore(step=1)
handlers = len(logging.root.handlers)
logging.basicConfig(format="mine: %(message)s")
logging.warning("configured")
print(json.dumps({"handlers": handlers, "step": step, "w": state["w"].tolist()}))
"""
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == {"handlers": 0, "step": 1, "w": [0.0, 1.0, 2.0]}
  assert "mine: configured" in result.stderr  # the program's own format


# ---------------------------------------------------------------------------
# Retention and the best step, from the project's manifests
# ---------------------------------------------------------------------------

def test_keeps_the_newest_and_the_best_without_orbax_metrics_files(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), keep=2, best_metric="val/exact_match")
  scores = {1: 0.5, 2: 0.9, 3: None, 4: 0.1, 5: None}
  for step, score in scores.items():
    metrics = None if score is None else {"val/exact_match": score, "val/loss": 1.0 - score}
    checkpointer.save(step, small_state(step), {"n": step}, metrics)
  assert step_dirs(str(tmp_path)) == [2, 4, 5] == checkpointer.steps()
  assert checkpointer.best_step() == 2
  for step in (2, 4, 5):
    assert not os.path.exists(tmp_path / "checkpoints" / str(step) / "metrics")
    manifest = manifest_of(str(tmp_path), step)
    assert manifest["version"] == 2 and set(manifest) == {"version", "files", "metrics"}
  assert manifest_of(str(tmp_path), 2)["metrics"] == {"val/exact_match": 0.9,
                                                      "val/loss": 1.0 - 0.9}
  assert manifest_of(str(tmp_path), 5)["metrics"] is None
  checkpointer.close()
  checkpointer.close()  # a second close does nothing
  reader = Checkpointer(str(tmp_path), best_metric="val/exact_match", read_only=True)
  assert reader.best_step() == 2
  state, meta, step = reader.restore(step=reader.best_step())
  assert step == 2 and meta == {"n": 2} and int(state["step"]) == 2
  # a loss: smaller is better
  assert Checkpointer(str(tmp_path), best_metric="val/loss", read_only=True).best_step() == 2


def test_a_step_without_its_file_list_is_named_when_it_changes_the_best(tmp_path,
                                                                       captured_warnings):
  """Its file list deleted (or a kill just before it was written): the step still
  restores, but unverified and without metrics to be the best by, and both are said."""
  with Checkpointer(str(tmp_path), keep=2, best_metric="val/exact_match") as checkpointer:
    for step, score in ((1, 0.5), (2, 0.9)):
      checkpointer.save(step, small_state(step), {"n": step}, {"val/exact_match": score})
  os.remove(tmp_path / "checkpoints" / "2" / MANIFEST)
  reader = Checkpointer(str(tmp_path), best_metric="val/exact_match", read_only=True)
  assert reader.best_step() == 1
  _, meta, step = reader.restore()
  assert step == 2 and meta == {"n": 2}
  assert captured_warnings == [f"warning: checkpoint 2 has no file list ({MANIFEST}; a run still "
                               "training may be writing it): its files cannot be verified and "
                               "it cannot be chosen as the best checkpoint."]


def test_a_step_whose_file_list_is_cut_short_is_said_unverified_when_restored(tmp_path,
                                                                              captured_warnings):
  """A file list cut short (a full disk, a copy stopped halfway): `translate --checkpoint
  latest` restored the step without a word, its files unchecked. It still restores (Orbax
  checks what it can), and that its files were not verified is said, once."""
  with Checkpointer(str(tmp_path), keep=2, best_metric="val/exact_match") as checkpointer:
    for step, score in ((1, 0.5), (2, 0.9)):
      checkpointer.save(step, small_state(step), {"n": step}, {"val/exact_match": score})
  with open(tmp_path / "checkpoints" / "2" / MANIFEST, "r+") as f:
    f.truncate(10)
  reader = Checkpointer(str(tmp_path), best_metric="val/exact_match", read_only=True)
  for _ in range(2):
    _, meta, step = reader.restore(step=2)
    assert step == 2 and meta == {"n": 2}
  assert len(captured_warnings) == 1 and captured_warnings[0].startswith(
      f"warning: checkpoint 2: its file list {MANIFEST} is unreadable (")
  assert captured_warnings[0].endswith("), so its files cannot be verified (Orbax's own "
                                       "checks only) and it cannot be chosen as the best "
                                       "checkpoint.")


def test_the_step_a_run_resumed_from_is_saved_again_without_calling_it_damaged(
    tmp_path, captured_warnings):
  """A run stopped after its epoch's last batch resumes at that step and saves it again at
  the epoch's end, with the epoch's metrics: the intact copy was moved to STEP.damaged with
  "it was not readable". It is replaced quietly; a step not read back is still set aside."""
  with Checkpointer(str(tmp_path), keep=3) as checkpointer:
    checkpointer.save(1, small_state(1), {"n": 1}, {"val/exact_match": 0.1})
    checkpointer.save(2, small_state(2), {"n": 2, "mid_epoch": True})
  with Checkpointer(str(tmp_path), keep=3) as checkpointer:
    _, meta, step = checkpointer.restore()
    assert step == 2 and meta == {"n": 2, "mid_epoch": True}
    checkpointer.save(2, small_state(2), {"n": 2}, {"val/exact_match": 0.5})
    assert checkpointer.best_step() == 2
    checkpointer.save(1, small_state(1), {"n": 1}, {"val/exact_match": 0.1})  # never read back
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "1.damaged", "2"]
  assert manifest_of(str(tmp_path), 2)["metrics"] == {"val/exact_match": 0.5}
  assert [m for m in captured_warnings if "already existed" in m] == [
      f"warning: checkpoint 1 already existed (it was not readable); moved it to "
      f"{tmp_path / 'checkpoints' / '1.damaged'} before saving step 1 again."]
  _, meta, _ = Checkpointer(str(tmp_path), read_only=True).restore(step=2)
  assert meta == {"n": 2}


def test_a_failed_or_killed_save_of_a_restored_step_keeps_the_step(tmp_path, monkeypatch):
  """The restored copy is set aside as STEP.replaced while the step is saved again: a save
  that fails puts it back, and one killed halfway leaves it, which the next run puts back
  (or deletes, where the new copy was complete)."""
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, small_state(1), {"n": 1})
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.restore()

    def full_disk(*args, **kwargs):
      raise OSError(28, "No space left on device")
    with monkeypatch.context() as patch:
      patch.setattr(checkpointer.manager, "save", full_disk)
      with pytest.raises(CheckpointError, match="could not save checkpoint 1"):
        checkpointer.save(1, small_state(5), {"n": 5})
    assert checkpointer.steps() == [1]
    checkpointer.save(1, small_state(1), {"n": 1})  # the copy put back is still the one read
  checkpoints = tmp_path / "checkpoints"
  assert sorted(os.listdir(checkpoints)) == ["1"]
  _, meta, _ = Checkpointer(str(tmp_path), read_only=True).restore()
  assert meta == {"n": 1}
  os.rename(checkpoints / "1", checkpoints / "1.replaced")  # killed before the new copy
  Checkpointer(str(tmp_path), read_only=True).close()  # a reader changes nothing
  assert sorted(os.listdir(checkpoints)) == ["1.replaced"]
  with Checkpointer(str(tmp_path)) as checkpointer:
    assert checkpointer.steps() == [1] and checkpointer.restore()[1] == {"n": 1}
  shutil.copytree(checkpoints / "1", checkpoints / "1.replaced")  # killed after it
  with Checkpointer(str(tmp_path)) as checkpointer:
    assert checkpointer.steps() == [1]
  assert sorted(os.listdir(checkpoints)) == ["1"]


def test_a_loss_metric_keeps_the_smallest_and_ties_go_to_the_newest(tmp_path):
  with Checkpointer(str(tmp_path), keep=1, best_metric="val/loss") as checkpointer:
    for step, loss in ((1, 2.0), (2, 1.0), (3, 3.0), (4, 1.0), (5, 4.0)):
      checkpointer.save(step, small_state(step), {"n": step}, {"val/loss": loss})
      assert checkpointer.steps() == sorted({step, checkpointer.best_step()})
    assert checkpointer.steps() == [4, 5] and checkpointer.best_step() == 4


@pytest.mark.parametrize("damage", ["garbled_manifest", "metrics_not_a_mapping",
                                    "metric_not_a_number"])
def test_unreadable_metrics_leave_the_step_usable_but_not_best(tmp_path, captured_warnings,
                                                               damage):
  with Checkpointer(str(tmp_path), keep=3) as checkpointer:
    checkpointer.save(1, small_state(1), {"n": 1}, {"val/exact_match": 0.2})
    checkpointer.save(2, small_state(2), {"n": 2}, {"val/exact_match": 0.7})
  path = tmp_path / "checkpoints" / "2" / MANIFEST
  manifest = json.loads(path.read_text())
  if damage == "garbled_manifest":
    path.write_text(path.read_text()[:40])
  else:
    manifest["metrics"] = ("{trunc" if damage == "metrics_not_a_mapping"
                           else {"val/exact_match": "0.7"})
    path.write_text(json.dumps(manifest))
  checkpointer = Checkpointer(str(tmp_path), read_only=True)
  assert checkpointer.best_step() == 1
  assert checkpointer.best_step() == 1
  _, meta, step = checkpointer.restore()
  assert step == 2 and meta == {"n": 2}
  warned = [m for m in captured_warnings if "checkpoint 2" in m]  # one warning, not two
  assert len(warned) == 1 and "cannot be chosen as the best checkpoint" in warned[0]
  assert ("file list" in warned[0] and "cannot be verified" in warned[0]) == (
      damage == "garbled_manifest")


def test_a_step_whose_metric_is_nan_is_never_the_best(tmp_path, captured_warnings):
  """A diverged evaluation (val/loss NaN) compares as neither better nor worse: a NaN
  step saved first stayed the best, and `best` restored the diverged model."""
  with Checkpointer(str(tmp_path), keep=3, best_metric="val/loss") as checkpointer:
    for step, loss in ((1, float("nan")), (2, 0.5), (3, float("nan"))):
      checkpointer.save(step, small_state(step), {"n": step}, {"val/loss": loss})
    assert checkpointer.steps() == [1, 2, 3] and checkpointer.best_step() == 2
  assert Checkpointer(str(tmp_path), best_metric="val/loss", read_only=True).best_step() == 2
  assert any("metrics of checkpoint 1 are unreadable (val/loss is nan, not a number)" in m
             for m in captured_warnings)


def test_a_step_without_a_manifest_cannot_be_best(tmp_path):
  with Checkpointer(str(tmp_path), keep=3) as checkpointer:
    checkpointer.save(1, small_state(1), {"n": 1}, {"val/exact_match": 0.2})
    checkpointer.save(2, small_state(2), {"n": 2}, {"val/exact_match": 0.7})
  os.remove(tmp_path / "checkpoints" / "2" / MANIFEST)
  checkpointer = Checkpointer(str(tmp_path), read_only=True)
  assert checkpointer.best_step() == 1 and checkpointer.restore()[2] == 2


def test_opening_for_training_removes_unfinished_steps_at_once(tmp_path):
  unfinished = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp" / "state"
  unfinished.mkdir(parents=True)
  (unfinished / "partial").write_bytes(b"\0" * 10)
  Checkpointer(str(tmp_path), read_only=True).close()
  assert unfinished.exists()  # reading never deletes anything
  checkpointer = Checkpointer(str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == []  # before __init__ returns
  checkpointer.close()


def test_a_damaged_step_asked_for_without_fallback_is_an_error(tmp_path, captured_warnings):
  """restore(step, fallback=False) (the CLI's --step N) on a step whose files no longer
  match their checksums: one error naming it and the steps to choose instead, never
  another step's weights restored as if they were step N's."""
  from seq2seq_jax.errors import CheckpointError
  with Checkpointer(str(tmp_path), keep=3) as checkpointer:
    for step in (1, 2, 3):
      checkpointer.save(step, small_state(step), {"n": step})
  state_dir = tmp_path / "checkpoints" / "2" / "state"
  biggest = max((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  data[-1] ^= 0xFF  # the same size, another checksum
  biggest.write_bytes(bytes(data))
  reader = Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(CheckpointError, match=r"checkpoint 2 in .* is damaged \(step 2: .*does "
                     r"not match its checksum\)\. Choose another: 1, 3 \(or best / latest"):
    reader.restore(step=2, fallback=False)
  _, meta, step = reader.restore(step=2)  # with fallback: the newest step that reads
  assert step == 3 and meta == {"n": 3}
  assert "warning: restored checkpoint 3 instead of the damaged checkpoint 2" in captured_warnings


def test_a_failed_write_of_a_file_list_leaves_the_one_before(tmp_path, monkeypatch):
  """The file list is written beside and renamed over the old one: written in place, a
  full disk midway left a truncated list, and the step unverifiable and never the best.
  The file written beside is removed (it was left in the step)."""
  import errno
  from seq2seq_jax import checkpoint as checkpoint_lib
  with Checkpointer(str(tmp_path), keep=3, best_metric="val/loss") as checkpointer:
    checkpointer.save(1, small_state(1), {"n": 1}, {"val/loss": 2.0})
    checkpointer.save(2, small_state(2), {"n": 2}, {"val/loss": 1.0})
  step = tmp_path / "checkpoints" / "2"
  before, listing = (step / MANIFEST).read_bytes(), sorted(os.listdir(step))

  def disk_full_before_the_rename(source, target):
    assert (step / MANIFEST).read_bytes() == before  # not written in place
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "replace", disk_full_before_the_rename)
  with pytest.raises(OSError, match="No space left"):
    checkpoint_lib.write_manifest(str(step), {"val/loss": 0.5})
  monkeypatch.undo()
  assert (step / MANIFEST).read_bytes() == before and sorted(os.listdir(step)) == listing
  reader = Checkpointer(str(tmp_path), best_metric="val/loss", read_only=True)
  assert reader.best_step() == 2 and reader.restore(step=2, fallback=False)[2] == 2


# ---------------------------------------------------------------------------
# Workdirs written by 0.1
# ---------------------------------------------------------------------------

@pytest.fixture
def workdir_0_1(tmp_path):
  copy = tmp_path / "workdir_0.1"
  shutil.copytree(FIXTURE, copy)
  return str(copy)


def test_a_0_1_workdir_gives_the_same_best_step_and_restores(workdir_0_1):
  before = tree_digest(workdir_0_1)
  checkpointer = Checkpointer(workdir_0_1, best_metric="val/exact_match", read_only=True)
  assert checkpointer.steps() == [7, 10]
  assert checkpointer.best_step() == 7  # from step 7's meta item: 10 has no metrics
  assert checkpointer.step_metrics(7)["val/exact_match"] == 0.0
  assert checkpointer.step_metrics(10) is None
  state, meta, step = checkpointer.restore(step=checkpointer.best_step())
  assert step == 7 == meta["step"] == int(np.asarray(state["step"]))
  _, meta, step = checkpointer.restore()
  assert step == 10 == meta["step"]
  checkpointer.close()
  assert tree_digest(workdir_0_1) == before  # reading changed nothing


def test_saving_into_a_0_1_workdir_keeps_its_best_step(workdir_0_1):
  with Checkpointer(workdir_0_1, keep=1, best_metric="val/exact_match") as checkpointer:
    checkpointer.save(11, small_state(11), {"n": 11})
    assert checkpointer.steps() == [7, 11] and checkpointer.best_step() == 7
    checkpointer.save(12, small_state(12), {"n": 12}, {"val/exact_match": 0.5})
    assert checkpointer.steps() == [12] and checkpointer.best_step() == 12


# ---------------------------------------------------------------------------
# A command that fails early exits with its one-line error and nothing after it
# ---------------------------------------------------------------------------

def _train_on(data, workdir):
  return subprocess.run(
      [sys.executable, "-m", "seq2seq_jax", "train", "--config", "configs/tiny.py",
       "--data", f"tsv:{data}", "--workdir", str(workdir)],
      capture_output=True, text=True, cwd=ROOT, timeout=300)


BAD_DATA = [("one\tun\ntwo\tdeux\nthree trois\nfour\tquatre\n".encode(), ":3: expected source<TAB>target"),
            (b"one\tun\n\xff\xfe\tdeux\n", ":2: not UTF-8")]


@pytest.mark.slow
def test_bad_data_exits_with_one_line_every_time(tmp_path):
  """Eight runs, four of each kind of bad data, three at a time: Orbax's start-up work used
  to print a thread's traceback after the error in about half of them, whatever the error
  (all eight clean by chance: 1 in 256)."""
  for kind, (content, _) in enumerate(BAD_DATA):
    (tmp_path / f"data{kind}.tsv").write_bytes(content)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    results = list(pool.map(lambda i: _train_on(tmp_path / f"data{i % 2}.tsv",
                                                tmp_path / f"run{i}"), range(8)))
  for i, result in enumerate(results):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("seq2seq-jax train: error:"), result.stderr
    assert BAD_DATA[i % 2][1] in lines[0]


OPEN_THEN_FAIL = r"""
import sys
from seq2seq_jax.checkpoint import Checkpointer
Checkpointer(sys.argv[1])
print("seq2seq-jax train: error: stopped", file=sys.stderr)
raise SystemExit(2)
"""


@pytest.mark.slow
def test_a_program_exiting_right_after_opening_checkpoints_prints_nothing_more(tmp_path):
  """The Checkpointer itself, whatever its caller closes: opening a workdir for training
  leaves no Orbax thread running (its clean-up of unfinished steps is done at once)."""
  def open_then_fail(i):
    workdir = tmp_path / f"run{i}"
    (workdir / "checkpoints" / "4.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-c", OPEN_THEN_FAIL, str(workdir)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    return result, os.listdir(workdir / "checkpoints")

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    for result, left in pool.map(open_then_fail, range(10)):
      assert result.returncode == 2
      assert result.stderr == "seq2seq-jax train: error: stopped\n", result.stderr
      assert left == []


def test_a_damaged_read_leaves_hooks_and_filters_as_they_were(tmp_path):
  """Orbax's leftover reports of a failed read are dropped only while it runs."""
  import warnings
  with Checkpointer(str(tmp_path), keep=3) as checkpointer:
    for step in (1, 2):
      checkpointer.save(step, {"w": np.arange(50_000, dtype=np.float32) * step}, {"n": step})
  state_dir = tmp_path / "checkpoints" / "2" / "state"
  biggest = max((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:100])
  os.remove(tmp_path / "checkpoints" / "2" / MANIFEST)  # so that Orbax's read fails
  hook, filters = sys.unraisablehook, list(warnings.filters)
  asyncio_filters = list(logging.getLogger("asyncio").filters)
  _, meta, step = Checkpointer(str(tmp_path), read_only=True).restore()
  assert step == 1 and meta == {"n": 1}
  assert sys.unraisablehook is hook and warnings.filters == filters
  assert logging.getLogger("asyncio").filters == asyncio_filters


def test_a_read_orbax_cannot_run_inside_an_event_loop_is_not_called_damage(tmp_path, monkeypatch):
  """Orbax without uvloop (older releases, Windows) cannot read inside a running asyncio
  event loop, a notebook's or a server's: that is one error saying so and what to do, not
  every intact step reported as damaged and a hint to restore files from a backup."""
  import orbax.checkpoint as ocp
  from seq2seq_jax.errors import CheckpointError
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, small_state(1.0), {"n": 1})

  def restore_without_uvloop(*args, **kwargs):  # what orbax's run_sync raises there
    raise RuntimeError("nest_asyncio is not installed. Please install it to use run_sync with "
                       "an existing event loop.")

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_without_uvloop)
  with pytest.raises(CheckpointError, match="inside a running asyncio event loop.*pip install "
                     "uvloop") as caught:
    Checkpointer(str(tmp_path), read_only=True).restore()
  assert "damaged" not in str(caught.value) and "backup" not in str(caught.value)
  assert step_dirs(str(tmp_path)) == [1]
