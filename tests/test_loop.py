"""The training loop: it never waits on the device between steps, one loop serves runs and
vectorised groups, and workdirs written by seq2seq_jax 0.1 restore, translate and resume."""

import contextlib
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from seq2seq_jax import config as config_lib
from seq2seq_jax import data as data_lib
from seq2seq_jax import loop
from seq2seq_jax.decode import make_beam_decoder
from seq2seq_jax.inference import evaluate_pairs, load_trained
from seq2seq_jax.workdir import CheckpointMeta, Progress, read_metrics
from tests.conftest import ROOT, event_scalars, tiny_config, tree_digest

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "workdir_0.1")


@pytest.mark.slow
def test_steps_run_without_reading_the_device_except_to_log_evaluate_and_checkpoint(
    tmp_path, monkeypatch):
  """Between log, checkpoint and epoch points nothing is copied to the host, and the
  metrics of step n are read only once step n + 1 is dispatched."""
  reads = []
  real_read_steps = loop._read_steps

  def read_steps(group, pending, clock, bar):
    if pending:
      reads.append((pending[-1][0], group.progress.step,
                    group.progress.batch == group.steps_per_epoch))
    with jax.transfer_guard_device_to_host("allow"):
      return real_read_steps(group, pending, clock, bar)

  monkeypatch.setattr(loop, "_read_steps", read_steps)
  for name in ("_end_epoch", "_save", "_final_evaluation"):
    real = getattr(loop, name)

    def allowed(*args, real=real, **kwargs):
      with jax.transfer_guard_device_to_host("allow"):
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, name, allowed)
  # 200 pairs / 32 = 7 steps an epoch; logs at steps 3, 6, 9, 12
  config = tiny_config(num_epochs=2, log_every_steps=3, bucket_width=0)
  with jax.transfer_guard_device_to_host("disallow"):
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  assert summary["step"] in (7, 14)
  # read behind the device: step n once n + 1 is dispatched, at the log steps
  behind = [(last_read, dispatched) for last_read, dispatched, _ in reads if last_read < dispatched]
  assert behind == [(3, 4), (6, 7), (9, 10), (12, 13)]
  # up to the newest step only where the epoch ends (its evaluation and checkpoint)
  assert all(at_epoch_end for last_read, dispatched, at_epoch_end in reads
             if last_read == dispatched)
  logged = [r["step"] for r in read_metrics(str(tmp_path / "run")) if "lr" in r]
  assert logged == [3, 6, 9, 12]


@pytest.mark.slow
def test_a_run_is_a_group_of_one(tmp_path):
  """train_and_evaluate and train_trials([config]) are the same loop: same files, same numbers."""
  config = tiny_config(num_epochs=1, numbers_train=64, bucket_width=0)  # one batch shape
  alone = loop.train_and_evaluate(config, str(tmp_path / "alone"), progress=False)
  [grouped] = loop.train_trials([config], [str(tmp_path / "grouped")], progress=False)
  assert grouped == alone
  # timings, and compilations (the second run finds the first's programs in JAX's cache)
  strip = lambda records: [{k: v for k, v in r.items() if "seconds" not in k and "per_sec" not in k
                            and k != "train/compilations"} for r in records]
  assert strip(read_metrics(str(tmp_path / "alone"))) == strip(read_metrics(str(tmp_path / "grouped")))


@pytest.mark.slow
def test_the_final_evaluation_scores_the_best_checkpoint_not_the_newest(tmp_path, monkeypatch):
  """results.json holds what `translate` (the best checkpoint) gives. In a tiny run the best
  is also the newest; here the oldest is made the best."""
  from seq2seq_jax.checkpoint import Checkpointer
  monkeypatch.setattr(Checkpointer, "best_step", lambda self: min(self.steps(), default=None))
  workdir = str(tmp_path / "run")
  summary = loop.train_and_evaluate(tiny_config(), workdir, progress=False)
  steps = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
                 if name.isdigit())
  assert summary["step"] == steps[0] < steps[-1]
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == steps[0]


@pytest.mark.slow
def test_a_signal_during_the_last_evaluation_stops_before_the_final_one(tmp_path, monkeypatch):
  """Ctrl-C while the last epoch validates (or saves) used to be lost: the final
  evaluation ran and the command ended 0. The run stops once that epoch's checkpoint is
  saved, and the same command resumes with only the final evaluation left."""
  config = tiny_config(num_epochs=1, numbers_train=64, bucket_width=0)  # 2 steps, one shape
  workdir = str(tmp_path / "run")
  real_validate = loop._validate

  def validate_then_ctrl_c(group, params):
    metrics = real_validate(group, params)
    os.kill(os.getpid(), signal.SIGINT)  # SignalCatcher's handler records it
    return metrics

  monkeypatch.setattr(loop, "_validate", validate_then_ctrl_c)
  with pytest.raises(loop.TrainingInterrupted, match=r"stopped by signal 2 at step 2; checkpoint saved"):
    loop.train_and_evaluate(config, workdir, progress=False)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  monkeypatch.setattr(loop, "_validate", real_validate)
  summary = loop.train_and_evaluate(config, workdir, progress=False)
  assert summary["step"] == 2 and "test/exact_match" in summary
  assert [r["step"] for r in read_metrics(workdir) if "train/epoch_seconds" in r] == [2]


def test_a_model_too_big_for_memory_is_refused_before_anything_is_written(tmp_path):
  """A latent_dim of 200,000 (600 billion parameters) started, and the kernel killed the
  process once it touched its arrays (a config.json left behind refused the next, fixed
  command as another run's). Its size is read from the shapes alone, and the workdir goes."""
  config = tiny_config(latent_dim=200_000)
  workdir = tmp_path / "big" / "run"
  with pytest.raises(loop.UserError, match=r"^the model has [\d,]+ parameters: their training "
                     r"state alone needs [\d,.]+ GiB.*, more than the [\d,.]+ GiB of CPU memory; "
                     "make embed_dim, latent_dim, num_layers or the vocabulary smaller.$"):
    loop.train_and_evaluate(config, str(workdir), progress=False)
  assert not (tmp_path / "big").exists()
  with pytest.raises(loop.UserError, match=r"config key 'latent_dim' is an array size: at most "
                     r"2,147,483,647; got 1(0){23}.$"):
    loop.train_and_evaluate(tiny_config(latent_dim=10**23), str(workdir), progress=False)


def test_a_file_given_as_the_workdir_is_named_as_such(tmp_path):
  (tmp_path / "pairs.tsv").write_text("one\tun\n")
  with pytest.raises(loop.UserError, match=r"workdir '.*pairs.tsv' is a file, not a directory"):
    loop.train_and_evaluate(tiny_config(), str(tmp_path / "pairs.tsv"), progress=False)
  # or under it (the file system's "Not a directory" before)
  with pytest.raises(loop.UserError, match=r"workdir '.*pairs.tsv/a/run' is under '.*pairs.tsv', "
                     r"a file, not a directory: give a path under a directory.$"):
    loop.train_and_evaluate(tiny_config(), str(tmp_path / "pairs.tsv" / "a" / "run"), progress=False)
  assert (tmp_path / "pairs.tsv").read_text() == "one\tun\n"


def test_tensorboard_true_without_tensorboardx_stops_before_anything_is_written(tmp_path,
                                                                                monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # import fails
  with pytest.raises(loop.UserError, match=r"tensorboard=true needs tensorboardX .* nothing was"):
    loop.train_and_evaluate(tiny_config(tensorboard=True), str(tmp_path / "run"), progress=False)
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_compilations_are_the_train_steps_own(tmp_path):
  """train/compilations counts the train step's programs, one a batch shape: what the
  "not settling" warning is about. With one step an epoch, the small programs that read
  the first logged step's metrics come in epoch 2; they used to be counted there and
  warned about as batch shapes not settling."""
  config = tiny_config(num_epochs=2, numbers_train=32, bucket_width=0)
  loop.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  counts = [r["train/compilations"] for r in read_metrics(str(tmp_path / "run"))
            if "train/compilations" in r]
  assert counts == [1, 0]


@pytest.mark.slow
def test_resuming_on_other_data_is_refused_and_the_checkpoints_are_kept(tmp_path):
  """A data file edited between two starts of the same run: fewer lines with the same
  characters were trained on silently, and another character set made the intact
  checkpoint read as damaged. Both are named as other data before anything is read."""
  lines = [f"{a} {b}\t{b} {a}" for a in ("one", "two", "three") for b in ("four", "five", "six")]
  data = tmp_path / "pairs.tsv"
  data.write_text("\n".join(lines * 4) + "\n")
  config = tiny_config(data=f"tsv:{data}", num_epochs=2, bucket_width=0, batch_size=8)
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.TrainingInterrupted):
    loop.train_and_evaluate(config, workdir, progress=False, stop_after_step=1)
  before = tree_digest(os.path.join(workdir, "checkpoints"))
  data.write_text("\n".join(lines * 3) + "\n")  # the same characters, fewer pairs
  with pytest.raises(loop.CheckpointError, match=r"the train and val and test split\(s\) of "
                     r"tsv:.* read now are not those checkpoint 1 was trained with"):
    loop.train_and_evaluate(config, workdir, progress=False)
  data.write_text("\n".join(line.upper() for line in lines * 4) + "\n")  # other characters
  with pytest.raises(loop.CheckpointError, match="the data's vocabulary differs"):
    loop.train_and_evaluate(config, workdir, progress=False)
  assert tree_digest(os.path.join(workdir, "checkpoints")) == before


def test_checkpoint_meta_reads_both_versions():
  """Version 1 (lists) and version 2 (named fields) give the same progress and sums."""
  v1 = {"config": {}, "src_vocab": ["a"], "tgt_vocab": ["b"], "position": {"epoch": 1, "batch": 3},
        "step": 10, "sums": {"window": [1.5, 3.0], "epoch": [4.0, 8.0, 2.0, 8.0]}, "rng": [0, 2]}
  meta = CheckpointMeta.from_json(v1)
  assert meta.progress == Progress(epoch=1, batch=3, step=10)
  assert (meta.sums.window.loss, meta.sums.epoch.loss, meta.sums.epoch.token_accuracy) == (0.5, 0.5, 0.25)
  assert meta.tokenizer == "char"  # before word tokens: characters
  again = CheckpointMeta.from_json(json.loads(json.dumps(meta.to_json())))
  assert again == meta and meta.to_json()["version"] == 2


def test_a_checkpoint_of_a_newer_version_says_to_upgrade():
  """A checkpoint written by a newer seq2seq_jax is refused in one line naming the fix,
  not read with this version's fields (its new ones dropped, others misread)."""
  from seq2seq_jax.workdir import META_VERSION
  newer = dict(CheckpointMeta(config={}, src_vocab=["a"], tgt_vocab=["b"]).to_json(),
               version=META_VERSION + 1)
  with pytest.raises(loop.CheckpointError, match=rf"^checkpoint 7 was written by a newer "
                     rf"seq2seq_jax \(meta version {META_VERSION + 1}\); upgrade seq2seq_jax "
                     r"to read it\.$"):
    CheckpointMeta.from_json(newer, "checkpoint 7")


@pytest.fixture
def old_workdir(tmp_path):
  """A copy of a workdir that seq2seq_jax 0.1 left when interrupted at step 10."""
  workdir = str(tmp_path / "old")
  shutil.copytree(FIXTURE, workdir)
  with open(FIXTURE + ".expected.json", encoding="utf-8") as f:
    return workdir, json.load(f)


@pytest.mark.slow
def test_a_workdir_of_version_0_1_restores_and_translates_as_it_did(old_workdir):
  workdir, expected = old_workdir
  translator, params, step = load_trained(workdir, "latest")
  assert step == expected["step"] == 10
  assert translator.translate(params, expected["sources"]) == expected["greedy"]
  beam = make_beam_decoder(translator.model, translator.decode_max_len, 3, 0.6)
  assert translator.translate(params, expected["sources"], decoder=beam) == expected["beam3"]
  config = translator.config
  val = data_lib.drop_long(data_lib.load_splits(config).val, config, "val")
  metrics, _ = evaluate_pairs(translator, params, val, full_text_metrics=False)
  assert metrics["loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
  assert metrics["token_accuracy"] == expected["val_token_accuracy"]
  _, _, best = load_trained(workdir)  # its only evaluated checkpoint, at the end of epoch 1
  assert best == 7


@pytest.mark.slow
def test_a_workdir_of_version_0_1_resumes_as_if_never_interrupted(old_workdir, tmp_path):
  """Resuming the old workdir ends where an uninterrupted run of today's code ends.

  The fixture's first 10 steps ran on the CPU that wrote it; XLA's CPU kernels may sum in
  another order on this one, so the two runs agree to float32 rounding here, not to the
  bit (bit-exact resume on one machine: test_train's resume tests).
  """
  workdir, _ = old_workdir
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = config_lib.from_dict(json.load(f), "the fixture's config.json")
  resumed = loop.train_and_evaluate(config, workdir, progress=False)
  fresh = loop.train_and_evaluate(config, str(tmp_path / "fresh"), progress=False)
  assert resumed == pytest.approx(fresh, rel=1e-4, abs=1e-6)
  for run in (workdir, str(tmp_path / "fresh")):
    steps = [r["step"] for r in read_metrics(run) if "lr" in r]
    assert steps == sorted(set(steps))  # one record per step, in order
  _, resumed_params, _ = load_trained(workdir, "latest")
  _, fresh_params, _ = load_trained(str(tmp_path / "fresh"), "latest")
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  jax.tree.map(close, resumed_params, fresh_params)


@pytest.mark.slow
def test_tensorboard_true_writes_step_and_epoch_losses_and_hparams_while_training(tmp_path):
  pytest.importorskip("tensorboardX")
  workdir = str(tmp_path / "run")
  config = tiny_config(num_epochs=2, numbers_train=64, bucket_width=0, log_every_steps=1,
                       tensorboard=True, dropout=0.1)
  loop.train_and_evaluate(config, workdir, progress=False)
  scalars = event_scalars(os.path.join(workdir, "tensorboard"))
  records = read_metrics(workdir)
  steps = [r for r in records if "lr" in r]
  epochs = [r for r in records if "train/epoch_seconds" in r]
  assert scalars["step/train/loss"] == [(r["step"], pytest.approx(r["train/loss"])) for r in steps]
  assert scalars["train/loss"] == [(r["step"], pytest.approx(r["train/loss"])) for r in epochs]
  assert "final/test/loss" in scalars
  hparams = event_scalars(os.path.join(workdir, "tensorboard", "hparams"))
  assert "hparam/test/loss" in hparams


# --- time_budget_minutes ---------------------------------------------------------------

@pytest.mark.slow
def test_a_time_budget_stops_training_evaluates_saves_and_the_run_resumes_cleanly(tmp_path):
  """A budget already spent when training starts: one step, then the validation metrics of
  that state, a checkpoint, the final evaluation and results.json saying where it stopped.
  The same run without the budget resumes from there to exactly an uninterrupted run's
  per-step losses and parameters."""
  import dataclasses
  import time
  config = tiny_config(num_epochs=3, log_every_steps=1, bucket_width=0, dropout=0.1)
  full_dir, budget_dir = str(tmp_path / "full"), str(tmp_path / "budget")
  loop.train_and_evaluate(config, full_dir, progress=False)
  budgeted = dataclasses.replace(config, time_budget_minutes=1.0)
  final = loop.train_and_evaluate(budgeted, budget_dir, progress=False, started=time.time() - 60)
  assert {"val/loss", "test/loss", "test/chrf", "test/exact_match"} <= set(final)
  results = json.load(open(os.path.join(budget_dir, "results.json")))
  assert results["stopped_by_time_budget"] is True and results["time_budget_minutes"] == 1.0
  steps_per_epoch = next(r["step"] for r in read_metrics(full_dir) if r.get("epoch") == 1
                         and "train/epoch_seconds" in r)
  assert results["epochs_reached"] == round(1 / steps_per_epoch, 3)
  records = read_metrics(budget_dir)
  stop = [r for r in records if r.get("time_budget_stop")]
  assert len(stop) == 1 and stop[0]["step"] == 1 and "val/chrf" in stop[0]
  assert records[-1]["final"] and records[-1]["stopped_by_time_budget"] is True

  resumed = loop.train_and_evaluate(config, budget_dir, progress=False)  # no budget now
  losses = lambda d: {r["step"]: r["train/loss"] for r in read_metrics(d) if "train/loss" in r}
  assert losses(budget_dir) == losses(full_dir)
  assert json.load(open(os.path.join(budget_dir, "results.json"))).get("time_budget_minutes") is None
  assert resumed["step"] is not None
  _, params_full, _ = load_trained(full_dir, "latest")
  _, params_resumed, _ = load_trained(budget_dir, "latest")
  jax.tree.map(np.testing.assert_array_equal, params_full, params_resumed)


def test_the_budget_counts_from_the_command_start_and_is_a_resumable_setting():
  from seq2seq_jax.workdir import RESUMABLE_CHANGES
  assert "time_budget_minutes" in RESUMABLE_CHANGES
  assert config_lib.Config().time_budget_minutes == 0.0
  with pytest.raises(config_lib.UserError, match="time_budget_minutes' must not be negative"):
    config_lib.apply_overrides(config_lib.Config(), ["time_budget_minutes=-1"])


@pytest.mark.parametrize("overrides, message", [
    ({"attention": "luong"}, "'attention' must be one of none, dot, general, additive"),
    ({"batch_size": 0}, "'batch_size' must be positive"),
    ({"latent_dim": "32"}, "'latent_dim' must be int"),
    ({"learning_rate": float("nan")}, "'learning_rate' must be a finite number"),
])
def test_a_config_built_in_python_is_checked_before_anything_is_written(tmp_path, overrides,
                                                                        message):
  """dataclasses.replace skips the checks a config file or --set gets: train_and_evaluate
  makes them (a luong attention trained as dot, then the run would not load; batch 0 was a
  ZeroDivisionError; latent_dim "32" a JAX TypeError that left a workdir behind)."""
  with pytest.raises(loop.UserError, match=message):
    loop.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "run"), progress=False)
  assert not (tmp_path / "run").exists()


def test_a_folder_with_another_program_s_config_json_is_not_taken_for_a_run(tmp_path):
  """A project folder holding its own config.json was read as a run's: "holds a run with a
  different configuration (numbers_max: 999999 -> 999...); its checkpoints were not
  touched" of a run that never was, and train.log and .lock were left in the folder."""
  folder = tmp_path / "project"
  folder.mkdir()
  (folder / "config.json").write_text('{"name": "my-app", "version": 3}')
  with pytest.raises(loop.CheckpointError) as caught:
    loop.train_and_evaluate(tiny_config(), str(folder), progress=False)
  assert str(caught.value) == (f"'{folder / 'config.json'}' is not the configuration of a "
                               "seq2seq-jax run (its keys: name, version): train in a new "
                               "--workdir, or a folder without a config.json.")
  assert os.listdir(folder) == ["config.json"]


def test_a_run_whose_checkpoints_are_gone_is_not_trained_over(tmp_path):
  """checkpoints/ deleted from a finished run (to free a disk): the same command started
  the run again from step 0, said it "dropped 10 record(s) logged after checkpoint 0 by the
  interrupted run" and replaced its results.json. A run killed before its first
  checkpoint (an empty checkpoints/, records, no results) still starts again."""
  from seq2seq_jax import workdir as workdir_lib
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"step": 10, "train/loss": 1.5}\n')
  (run / "results.json").write_text('{"step": 10, "test/exact_match": 0.9}')
  for state in ("gone", "empty"):
    if state == "empty":
      (run / "checkpoints").mkdir()
    before = tree_digest(run)
    with pytest.raises(loop.CheckpointError) as caught:
      loop.train_and_evaluate(tiny_config(), str(run), progress=False)
    assert str(caught.value) == (
        f"workdir '{run}' holds a run's metrics.jsonl and results.json but none of its "
        f"checkpoints (checkpoints/ is {state}): training there would start again from step 0 "
        "over them. Put the checkpoints back to resume the run, or train in a new --workdir.")
    assert tree_digest(run) == before and not (run / ".lock").exists()
  (run / "results.json").unlink()
  workdir_lib.check_checkpoints_kept(str(run))  # killed before its first checkpoint


def test_a_killed_run_s_temporary_files_go_when_the_run_resumes(tmp_path):
  """A kill between a write and its rename left config.json.PID-XXXXXXXX.tmp (each write
  has its own temporary name): the next start of the run removes those of its own files,
  and keeps every other file, a temporary one of another command's output included."""
  from seq2seq_jax import workdir as workdir_lib
  stale = ["config.json.4242-0badc0de.tmp", "metrics.jsonl.17-deadbeef.tmp"]
  kept = ["hyps.txt.4242-0badc0de.tmp", "notes.tmp", "config.json.tmp"]
  for name in stale + kept:
    (tmp_path / name).write_text("x")
  workdir_lib.remove_stale_temporaries(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_a_failed_atomic_write_names_the_file_asked_for(tmp_path):
  """`--hyps /proc/nope.txt` said 'No such file or directory /proc/nope.txt.tmp'."""
  from seq2seq_jax.workdir import write_atomically
  path = tmp_path / "missing" / "hyps.txt"
  with pytest.raises(FileNotFoundError) as caught:
    write_atomically(str(path), "text\n")
  assert caught.value.filename == str(path) and os.listdir(tmp_path) == []


def test_an_atomic_write_treats_links_pipes_devices_and_neighbours_as_a_shell_s_redirection_does(
    tmp_path):
  """`evaluate --hyps` (and `benchmark --output`) replaced whatever lay at the path: a
  symbolic link became a file (its target untouched), a FIFO a file (its reader waiting for
  ever), /dev/full a file; and a user's own FILE.tmp was deleted. As `>` does: a link is
  written through, a FIFO or a device is written into, a file keeps its permissions, and
  the temporary file's name is no other file's."""
  import stat
  import threading
  from seq2seq_jax.workdir import write_atomically
  target, link = tmp_path / "target.txt", tmp_path / "link.txt"
  target.write_text("old\n")
  target.chmod(0o640)
  link.symlink_to(target.name)
  (tmp_path / "link.txt.tmp").write_text("the user's notes\n")
  write_atomically(str(link), "new\n")
  assert link.is_symlink() and target.read_text() == "new\n"
  assert stat.S_IMODE(target.stat().st_mode) == 0o640
  assert sorted(os.listdir(tmp_path)) == ["link.txt", "link.txt.tmp", "target.txt"]
  assert (tmp_path / "link.txt.tmp").read_text() == "the user's notes\n"
  fifo = tmp_path / "fifo"
  os.mkfifo(fifo)
  read = []
  reader = threading.Thread(target=lambda: read.append(fifo.read_text()))
  reader.start()
  write_atomically(str(fifo), "through the pipe\n")
  reader.join(timeout=10)
  assert read == ["through the pipe\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
  # a system's name for a pipe (a shell's >(...), /dev/stdout): was "No such file or
  # directory '/dev/fd/63'", its link leading to 'pipe:[N]'
  if os.path.isdir("/dev/fd"):
    read_end, write_end = os.pipe()
    try:
      write_atomically(f"/dev/fd/{write_end}", "into the pipe\n")
      assert os.read(read_end, 100) == b"into the pipe\n"
    finally:
      os.close(read_end)
      os.close(write_end)
    # a file open on a descriptor (`--hyps /dev/stdout > out.txt`): written where the
    # descriptor stands, as `>&1` does; reopened, the file was emptied under what the
    # program had written there, and the two overwrote each other
    with open(tmp_path / "out.txt", "wb", buffering=0) as out:
      out.write(b"written first\n")
      write_atomically(f"/dev/fd/{out.fileno()}", "then these\n")
      out.write(b"and after\n")
    assert (tmp_path / "out.txt").read_text() == "written first\nthen these\nand after\n"
  loop_a, loop_b = tmp_path / "loop_a", tmp_path / "loop_b"  # a loop of links: an error
  loop_a.symlink_to(loop_b.name)
  loop_b.symlink_to(loop_a.name)
  with pytest.raises(OSError) as caught:
    write_atomically(str(loop_a), "text\n")
  assert caught.value.filename == str(loop_a) and loop_a.is_symlink() and loop_b.is_symlink()
  # devices: copies of /dev/null and /dev/full made here (root only), so that a regression
  # replaces these, not the machine's
  null, full = tmp_path / "null", tmp_path / "full"
  try:
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
  except OSError:
    return  # no right to make devices here
  write_atomically(str(null), b"discarded")
  assert stat.S_ISCHR(os.stat(null).st_mode)
  with pytest.raises(OSError) as caught:  # a full device: its error, naming the path given
    write_atomically(str(full), "text\n")
  assert caught.value.filename == str(full) and stat.S_ISCHR(os.stat(full).st_mode)


def test_an_atomic_write_gives_a_new_file_the_usual_permissions_and_an_old_one_its_own(tmp_path):
  """As `>` does: a new file is readable and writable as the umask lets it (0o644 under
  0o022), and a replaced file keeps permissions the umask would take off (0o666 stays)."""
  import stat
  from seq2seq_jax.workdir import write_atomically
  old_umask = os.umask(0o022)
  try:
    write_atomically(str(tmp_path / "new.txt"), "new\n")
    shared = tmp_path / "shared.txt"
    shared.write_text("old\n")
    shared.chmod(0o666)
    write_atomically(str(shared), "new\n")
  finally:
    os.umask(old_umask)
  assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
  assert shared.read_text() == "new\n" and stat.S_IMODE(shared.stat().st_mode) == 0o666


def test_an_atomic_write_refuses_a_read_only_file_as_a_shell_s_redirection_does(tmp_path):
  """The folder being writable, the file could be replaced; `>` says "Permission denied"
  and leaves it, and so does the write (root, who may write any file, writes as nobody)."""
  import stat
  import subprocess
  import sys
  import tempfile
  from seq2seq_jax.workdir import write_atomically
  with contextlib.ExitStack() as stack:
    if os.geteuid() == 0:  # a folder that nobody reaches (not under pytest-of-root)
      if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to write as another user")
      folder = stack.enter_context(tempfile.TemporaryDirectory())
      os.chmod(folder, 0o777)
    else:
      folder = str(tmp_path)
    target = os.path.join(folder, "results.txt")
    with open(target, "w") as f:
      f.write("kept\n")
    os.chmod(target, 0o444)
    if os.geteuid() != 0:
      with pytest.raises(PermissionError) as caught:
        write_atomically(target, "new")
      refused = caught.value.filename
    else:
      script = ("import sys; from seq2seq_jax.workdir import write_atomically\n"
                "assert open(sys.argv[1]).read() == 'kept\\n'\n"
                "try:\n  write_atomically(sys.argv[1], 'new')\n"
                "except PermissionError as error:\n  print(error.filename)\n")
      as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
      probe = subprocess.run([*as_nobody, "-c", "import seq2seq_jax.workdir"], cwd=ROOT,
                             capture_output=True, text=True)
      if probe.returncode != 0:  # e.g. the checkout or the venv under /root
        pytest.skip(f"nobody cannot run this interpreter here: {probe.stderr.strip()[-200:]}")
      done = subprocess.run([*as_nobody, "-c", script, target], cwd=ROOT,
                            capture_output=True, text=True)
      assert done.returncode == 0, done.stderr
      refused = done.stdout.strip()
    assert refused == target and open(target).read() == "kept\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o444 and os.listdir(folder) == ["results.txt"]


def test_an_atomic_write_to_a_process_s_descriptor_by_its_pid_writes_where_it_stands(tmp_path):
  """/proc/PID/fd/N: this process's own descriptor N is written through, where it stands, as
  /dev/fd/N is; another process's names its open file, written as a file."""
  import subprocess
  import sys
  from seq2seq_jax.workdir import write_atomically
  if not os.path.isdir(f"/proc/{os.getpid()}/fd"):
    pytest.skip("no /proc")
  with open(tmp_path / "own.txt", "wb", buffering=0) as own:
    own.write(b"written first\n")
    write_atomically(f"/proc/{os.getpid()}/fd/{own.fileno()}", "then these\n")
    own.write(b"and after\n")
  assert (tmp_path / "own.txt").read_text() == "written first\nthen these\nand after\n"
  with open(tmp_path / "other.txt", "w") as stdout:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=stdout)
  try:
    write_atomically(f"/proc/{other.pid}/fd/1", "into its file\n")
  finally:
    other.kill()
    other.wait()
  assert (tmp_path / "other.txt").read_text() == "into its file\n"


def test_a_temporary_file_of_the_resuming_process_itself_is_kept(tmp_path):
  """Its own pid's temporary file is a write under way, not one a killed run left."""
  from seq2seq_jax import workdir as workdir_lib
  own = f"metrics.jsonl.{os.getpid()}-0badc0de.tmp"
  (tmp_path / own).write_text("x")
  workdir_lib.remove_stale_temporaries(str(tmp_path))
  assert os.listdir(tmp_path) == [own]


def test_run_json_names_the_command_as_the_user_typed_it(tmp_path):
  """`python -m seq2seq_jax` (as train re-executes itself) is recorded as seq2seq-jax."""
  from seq2seq_jax import workdir as workdir_lib
  main = os.path.join(ROOT, "seq2seq_jax", "__main__.py")
  workdir_lib.write_run_info(str(tmp_path), [main, "train", "--workdir", "run"], {"devices": 1})
  with open(tmp_path / "run.json") as f:
    info = json.load(f)
  assert info["command"] == ["seq2seq-jax", "train", "--workdir", "run"] and info["devices"] == 1


def test_a_config_json_that_is_no_json_object_is_not_taken_for_a_run(tmp_path):
  """A list or a number in config.json: the same one line as another program's settings."""
  from seq2seq_jax import workdir as workdir_lib
  for text in ('[{"batch_size": 32}]', "3"):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(loop.CheckpointError) as caught:
      workdir_lib.check_workdir_config(str(tmp_path), tiny_config())
    assert str(caught.value) == (f"'{tmp_path / 'config.json'}' is not the configuration of a "
                                 "seq2seq-jax run (no setting of one): train in a new --workdir, "
                                 "or a folder without a config.json.")


def test_an_empty_metrics_jsonl_without_checkpoints_holds_no_run_to_protect(tmp_path):
  """(All its records dropped on a resume from step 0.) Training there starts the run."""
  from seq2seq_jax import workdir as workdir_lib
  (tmp_path / "metrics.jsonl").write_text("")
  workdir_lib.check_checkpoints_kept(str(tmp_path))


def test_the_best_checkpoint_is_chosen_by_the_run_s_own_metric(tmp_path):
  """The best_metric in the run's config.json; the default where it is missing or unreadable."""
  from seq2seq_jax import workdir as workdir_lib
  assert workdir_lib.saved_best_metric(str(tmp_path)) == "val/exact_match"
  (tmp_path / "config.json").write_text(json.dumps({"best_metric": "val/loss"}))
  assert workdir_lib.saved_best_metric(str(tmp_path)) == "val/loss"
  (tmp_path / "config.json").write_text('{"best_metric": ')
  assert workdir_lib.saved_best_metric(str(tmp_path)) == "val/exact_match"


def test_a_json_file_half_written_reads_as_missing(tmp_path):
  """A trial's results.json cut short by a kill reads as none, as a missing one does."""
  from seq2seq_jax import workdir as workdir_lib
  (tmp_path / "results.json").write_text('{"test/exact_match": 0.')
  assert workdir_lib.read_json(str(tmp_path / "results.json")) is None
  assert workdir_lib.read_json(str(tmp_path / "missing.json")) is None
