"""Sweeps through an Optuna study: declared trials keep their order, a search asks
num_trials, several workers share one study without running a trial twice, a pruner stops
a bad trial inside a vectorised group, and a dead worker's trial is finished by another."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from seq2seq_jax import sweep as sweep_lib
from seq2seq_jax.loop import Pruned, TrainingInterrupted
from seq2seq_jax.study import SweepStudy
from tests.conftest import tiny_config
from tests.conftest import ROOT, run_cli

SWEEP_TINY = os.path.join(ROOT, "configs", "sweep_tiny.py")
SWEEP_ASHA = os.path.join(ROOT, "configs", "sweep_tiny_asha.py")


def results(workdir):
  with open(os.path.join(workdir, "results.csv")) as f:
    return list(csv.DictReader(f))


def test_a_declared_sweep_gives_its_trials_in_order_once(tmp_path):
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  study.enqueue_declared()  # a second worker, or the same command again
  asked = study.ask_group(10)
  assert [trial.name for _, trial in asked] == [t.name for t in sweep.trials]
  for optuna_trial, _ in asked:
    study.complete(optuna_trial, 0.5)
  assert study.ask() is None
  assert set(study.states().values()) == {"complete"}


def test_a_journal_cut_short_as_it_was_written_loses_only_the_cut_record(tmp_path, caplog):
  """A worker killed (or a disk full) during a write left half a record at the journal's
  end: Optuna read past it, the next write of any worker was appended onto it, and every
  read after failed with a JSONDecodeError traceback. Each write now drops such a record
  first, with a warning; what was whole stays."""
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  optuna_trial, trial = study.ask()
  study.complete(optuna_trial, 0.5)
  running = SweepStudy(sweep, str(tmp_path))  # a worker still running
  journal = tmp_path / "study.journal"
  whole = journal.read_bytes()
  journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "cut sh')  # the killed one's
  asked = [t.name for _, t in running.ask_group(10)]  # the running worker's next writes
  assert asked == [t.name for t in sweep.trials[1:]]
  assert journal.read_bytes().startswith(whole) and b"cut sh" not in journal.read_bytes()
  assert "ended in a record cut short (35 bytes: a write was interrupted); dropping it" in caplog.text
  assert set(SweepStudy(sweep, str(tmp_path)).states().values()) == {"complete", "running"}
  import pickle  # the storage still pickles, as Optuna's own does (for library users' pools)
  assert pickle.loads(pickle.dumps(running.storage))._backend.path == str(journal)


def test_a_search_skips_draws_whose_values_are_not_valid_together(tmp_path, caplog):
  """decoder_input=repeat is valid beside attention=none, not beside dot: the search is
  declared valid, and a draw of repeat with dot (a trial that stopped the sweep, on every
  rerun) is skipped with a warning; text choices come back typed, the enqueued one first."""
  from seq2seq_jax.config import Config
  spec = {"search": {"decoder_input": ["previous", "repeat"], "attention": ["none", "dot"],
                     "learning_rate": ["3e-3", "1e-2"]},
          "num_trials": 6, "sampler": "random",
          "enqueue": [{"decoder_input": "previous", "attention": "dot", "learning_rate": "3e-3"}]}
  sweep = sweep_lib.make_sweep(dataclasses.replace(tiny_config(), attention="general"), spec)
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  asked = [trial for _, trial in study.ask_group(10)]
  assert asked[0].name == "decoder_input=previous,attention=dot,learning_rate=0.003"
  assert len(asked) == 6 and all(
      not (t.config.decoder_input == "repeat" and t.config.attention != "none") for t in asked)
  assert "which are not valid settings together" in caplog.text and "drawing again" in caplog.text
  assert {t.config.learning_rate for t in asked} <= {3e-3, 1e-2}


def test_a_damaged_journal_is_one_line_naming_it(tmp_path):
  """Bytes that are not Optuna's records (not UTF-8, not JSON) inside the journal: a
  traceback from json before; one line naming the file and what to do."""
  from seq2seq_jax.errors import UserError
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  SweepStudy(sweep, str(tmp_path)).enqueue_declared()
  journal = tmp_path / "study.journal"
  for junk in (b"\xff\xfe not text\n", b"{not json\n"):
    kept = journal.read_bytes()
    journal.write_bytes(kept + junk)
    with pytest.raises(UserError, match=rf"^the sweep's study {journal} is damaged \((Unicode|JSON)"
                       r"DecodeError: .*\); move it away to start the study afresh \(the trials' "
                       r"workdirs stay\), or run the sweep with a new --workdir.$"):
      SweepStudy(sweep, str(tmp_path))
    journal.write_bytes(kept)


def test_declared_trials_that_set_different_keys_keep_the_base_for_the_others(tmp_path):
  spec = {"trials": [{"latent_dim": 64}, {"dropout": 0.1}, {"latent_dim": 16, "dropout": 0.2}]}
  sweep = sweep_lib.make_sweep(tiny_config(), spec)
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  asked = [trial for _, trial in study.ask_group(10)]
  assert [trial.name for trial in asked] == ["latent_dim=64", "dropout=0.1",
                                             "latent_dim=16,dropout=0.2"]
  assert asked[0].config.dropout == tiny_config().dropout  # not drawn from the others' values
  assert asked[1].config.latent_dim == tiny_config().latent_dim


def test_a_search_asks_its_enqueued_trial_first_then_the_sampler_up_to_num_trials(tmp_path):
  sweep = sweep_lib.load_sweep(SWEEP_ASHA)
  assert (sweep.searched, sweep.sampler, sweep.pruner, sweep.num_trials) == (True, "tpe", "asha", 6)
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  asked = study.ask_group(10)
  names = [trial.name for _, trial in asked]
  assert len(names) == len(set(names)) == 6
  assert names[0] == "learning_rate=1e-05,dropout=0.0"
  for _, trial in asked:
    assert 1e-5 <= trial.config.learning_rate <= 3e-2 and trial.config.dropout in (0.0, 0.1)


def test_a_running_trial_without_heartbeat_is_enqueued_again(tmp_path):
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  first_worker = SweepStudy(sweep, str(tmp_path))
  first_worker.enqueue_declared()
  [(dead, trial)] = first_worker.ask_group(1)
  dead.set_user_attr("heartbeat", time.time() - 2 * sweep.grace_seconds)  # its worker died
  other_worker = SweepStudy(sweep, str(tmp_path))
  asked = [t.name for _, t in other_worker.ask_group(10)]
  assert sorted(asked) == sorted(t.name for t in sweep.trials)  # the dead one's included
  assert other_worker.states()[trial.name] == "running"


def test_asked_trials_waiting_for_an_earlier_group_keep_beating(tmp_path, monkeypatch):
  """A worker trains what it asked a group at a time (trials resumed from other steps
  cannot share a program). The groups waiting their turn beat too: another worker once
  took them for dead after grace_seconds and trained them at the same time."""
  sweep = dataclasses.replace(sweep_lib.load_sweep(SWEEP_TINY), heartbeat_seconds=0.05,
                              grace_seconds=0.5)
  worker = SweepStudy(sweep, str(tmp_path))
  worker.enqueue_declared()
  monkeypatch.setattr(sweep_lib, "_plan", lambda asked, *_: [[pair] for pair in asked])
  taken, looked = [], []

  def run_group(study, sweep_, group, *args):  # each trial a group; a second worker looks
    if not looked:  # while the first group trains
      looked.append(time.sleep(0.6))
      asked = SweepStudy(sweep, str(tmp_path)).ask()  # retries the trials it finds stale
      taken.extend([asked[1].name] if asked else [])
    study.complete(group[0][0], 0.5)

  monkeypatch.setattr(sweep_lib, "_run_group", run_group)
  monkeypatch.setattr(sweep_lib, "write_outputs", lambda *args: None)
  sweep_lib.work(sweep, str(tmp_path), study=worker)
  assert taken == []  # nothing was left to take: every trial ran once, here
  assert set(worker.states().values()) == {"complete"}


def test_an_interrupted_trial_comes_back_as_itself_and_counts_as_waiting(tmp_path):
  """A trial an interrupt stopped is enqueued again: the same declared trial (a trial of a
  `trials` sweep sets only its own keys, the others are not drawn), counted as still to
  run, not as done."""
  spec = {"trials": [{"latent_dim": 64}, {"dropout": 0.1}]}
  sweep = sweep_lib.make_sweep(tiny_config(), spec)
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  asked = study.ask_group(10)
  for optuna_trial, _ in asked:
    study.requeue(optuna_trial)  # what an interrupt does to each running trial
  assert study.states() == {"latent_dim=64": "waiting", "dropout=0.1": "waiting"}
  again = SweepStudy(sweep, str(tmp_path)).ask_group(10)
  assert [trial.name for _, trial in again] == ["latent_dim=64", "dropout=0.1"]


def _a_trial_left_to_its_late_worker(tmp_path):
  """(sweep, the slow worker's study, its trial, the sweep Trial): its heartbeat came
  late, another worker took it for dead, found the workdir locked and released its copy;
  the other worker finished every other trial."""
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  slow = SweepStudy(sweep, str(tmp_path))
  slow.enqueue_declared()
  [(late, trial)] = slow.ask_group(1)
  late.set_user_attr("heartbeat", time.time() - 2 * sweep.grace_seconds)
  other = SweepStudy(sweep, str(tmp_path))
  for optuna_trial, asked in other.ask_group(10):  # the copy of the late one among them
    if asked.name == trial.name:
      other.release(optuna_trial)  # its workdir was locked: left to the live worker
    else:
      other.complete(optuna_trial, 0.4)
  return sweep, slow, late, trial


def test_a_worker_whose_trial_was_taken_for_dead_tells_its_outcome_without_failing(tmp_path):
  """A worker's heartbeat came late: another worker took its trial for dead, found its
  workdir locked and left it. The live worker's result is then recorded, not a crash."""
  sweep, slow, late, trial = _a_trial_left_to_its_late_worker(tmp_path)
  slow.complete(late, 0.5)  # was: ValueError: Cannot tell a FAIL trial.
  assert slow.states()[trial.name] == "waiting"  # its workdir will tell the outcome
  assert [t.name for _, t in slow.ask_group(10)] == [trial.name]


def test_a_trial_left_to_a_worker_that_then_died_comes_back_in_the_next_run(tmp_path):
  """The copy left to the live worker is a spare: it does not stand for the trial. If that
  worker then dies without a word, the next run of the sweep enqueues the trial again."""
  sweep, slow, _, trial = _a_trial_left_to_its_late_worker(tmp_path)
  del slow  # killed: it never tells
  rerun = SweepStudy(sweep, str(tmp_path))
  rerun.reconcile(lambda name: False)  # no trial's workdir finished
  assert rerun.states()[trial.name] == "waiting"
  assert trial.name in [t.name for _, t in rerun.ask_group(10)]


def test_search_declaration_errors_name_the_problem():
  from seq2seq_jax.config import Config
  from seq2seq_jax.errors import UserError
  with pytest.raises(UserError, match="needs num_trials"):
    sweep_lib.make_sweep(Config(), {"search": {"learning_rate": ("log_uniform", 1e-4, 1e-2)}})
  with pytest.raises(UserError, match="pruner must be one of none, median, asha"):
    sweep_lib.make_sweep(Config(), {"grid": {"learning_rate": [1e-3]}, "pruner": "hyperband"})
  with pytest.raises(UserError, match="sampler 'tpe' proposes its own trials"):
    sweep_lib.make_sweep(Config(), {"grid": {"learning_rate": [1e-3]}, "sampler": "tpe"})


@pytest.mark.slow
def test_two_workers_complete_the_tpe_asha_sweep_each_trial_once_pruning_the_bad_one(tmp_path):
  workdir = str(tmp_path / "asha")
  result = run_cli("sweep", "--config", SWEEP_ASHA, "--workdir", workdir, "--workers", "2")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = results(workdir)
  assert len(rows) == len({r["trial"] for r in rows}) == 6  # each trial once
  assert {r["state"] for r in rows} <= {"complete", "pruned", "failed"}
  assert "complete" in {r["state"] for r in rows}
  bad = next(r for r in rows if r["trial"] == "learning_rate=1e-05,dropout=0.0")
  assert bad["state"] == "pruned" and int(bad["steps"]) < 21  # before its last epoch
  # its group-mates went on in the same program, compiling nothing after the first epoch
  for row in rows:
    with open(os.path.join(workdir, row["trial"], "metrics.jsonl")) as f:
      epochs = [json.loads(line) for line in f if '"train/compilations"' in line]
    assert [e["train/compilations"] for e in epochs[1:]] == [0] * (len(epochs) - 1)
  assert any(int(r["steps"]) == 21 and int(r["vmap_trials"]) == 3 for r in rows)


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_finished_by_another_from_its_checkpoint(tmp_path):
  workdir = str(tmp_path / "killed")
  # four epochs with a checkpoint every 3 steps: a worker is killed mid-trial
  args = ["sweep", "--config", SWEEP_ASHA, "--workdir", workdir, "--worker",
          "--set", "checkpoint_every_steps=3", "--set", "num_epochs=4"]
  env = dict(os.environ, SEQ2SEQ_JAX_SWEEP_WORKER="1")
  victim = subprocess.Popen([sys.executable, "-m", "seq2seq_jax", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  killed_trial = None
  while time.time() < deadline and killed_trial is None:
    time.sleep(0.2)
    for name in os.listdir(workdir) if os.path.isdir(workdir) else []:
      steps = os.path.join(workdir, name, "checkpoints")
      if (os.path.isdir(steps) and any(s.isdigit() for s in os.listdir(steps))
          and not os.path.exists(os.path.join(workdir, name, "results.json"))):
        killed_trial = name
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert killed_trial is not None, "no trial reached a checkpoint"
  survivor = run_cli(*args, env_extra={"SEQ2SEQ_JAX_SWEEP_WORKER": "2"})
  assert survivor.returncode == 0, survivor.stdout[-3000:] + survivor.stderr[-3000:]
  assert "its worker stopped" in survivor.stdout
  with open(os.path.join(workdir, killed_trial, "train.log")) as f:
    assert "resumed" in f.read()  # from its checkpoint, not step 0
  rows = results(workdir) if os.path.exists(os.path.join(workdir, "results.csv")) else []
  study = SweepStudy(sweep_lib.load_sweep(SWEEP_ASHA, ["checkpoint_every_steps=3",
                                                       "num_epochs=4"]), workdir)
  states = study.states()
  assert len(states) == 6 and "running" not in states.values() and "waiting" not in states.values()
  assert len(rows) == 6


def test_a_storage_that_cannot_be_opened_is_one_line_and_writes_nothing(tmp_path, capsys):
  from tests.conftest import cli_in_process
  workdir = tmp_path / "sweep"
  url = f"sqlite:///{tmp_path}/missing/study.db"  # a directory that does not exist
  code, out, err = cli_in_process(capsys, "sweep", "--config", SWEEP_TINY, "--workdir",
                                  str(workdir), "--storage", url)
  assert code == 2 and err.count("\n") == 1, err
  assert err.startswith(f"seq2seq-jax sweep: error: --storage {url}: ") and "Background" not in err
  assert not workdir.exists()  # no sweep.json that a later run would read as this sweep's


@pytest.mark.parametrize("where", ["in training", "in the final evaluation"])
def test_an_interrupted_group_keeps_the_outcome_of_a_trial_pruned_before(tmp_path, monkeypatch,
                                                                         where):
  """Ctrl-C in epoch 2 of a vectorised group whose bad trial the pruner stopped after
  epoch 1 (or during the others' final evaluation): that trial is recorded as pruned (the
  same command again does not train it on), the others run again from their checkpoints."""
  sweep = sweep_lib.load_sweep(SWEEP_ASHA)
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  group = study.ask_group(3)
  bad = group[1][0].number
  monkeypatch.setattr(study, "should_prune", lambda optuna_trial: optuna_trial.number == bad)

  def interrupted(configs, workdirs, prune, **kwargs):
    del configs, workdirs, kwargs
    assert prune(1, {i: {"val/loss": 3.0 + i} for i in range(3)}) == [1]
    if where == "in training":
      raise TrainingInterrupted("stopped by signal 2 at step 10",
                                [None, Pruned(epoch=1, metrics={"val/loss": 4.0}), None])
    raise KeyboardInterrupt("SIGINT")
  monkeypatch.setattr(sweep_lib.loop, "train_trials", interrupted)
  with pytest.raises((TrainingInterrupted, KeyboardInterrupt)):
    sweep_lib._run_group(study, sweep, group, str(tmp_path), False, None, [], False)
  statuses = [sweep_lib.trial_status(os.path.join(tmp_path, t.name)) for _, t in group]
  assert statuses == ["new", "pruned", "new"]  # trial.json says "interrupted" for the others
  assert study.states()[group[1][1].name] == "pruned"
  again = [trial.name for _, trial in study.ask_group(3)]
  assert again[:2] == [group[0][1].name, group[2][1].name]  # the study asks them again first
  assert group[1][1].name not in again


def test_a_mode_max_study_takes_the_highest_value_for_the_best(tmp_path):
  """A sweep of metric val/exact_match (mode max) minimised it: its sampler went after
  the worst trials and its best trial was the lowest."""
  sweep = dataclasses.replace(sweep_lib.load_sweep(SWEEP_TINY), metric="val/exact_match",
                              mode="max")
  study = SweepStudy(sweep, str(tmp_path))
  assert study.study.direction == study.optuna.study.StudyDirection.MAXIMIZE
  study.enqueue_declared()
  (low, _), (high, trial) = study.ask_group(2)
  study.complete(low, 0.2)
  study.complete(high, 0.9)
  assert study.study.best_trial.user_attrs["trial"] == trial.name


def test_a_trial_whose_heartbeat_is_older_than_grace_seconds_is_taken_for_dead(tmp_path):
  """A heartbeat 1.5 x grace_seconds old was still taken for a live worker's."""
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  first_worker = SweepStudy(sweep, str(tmp_path))
  first_worker.enqueue_declared()
  (dead, trial), (alive, live_trial) = first_worker.ask_group(2)
  dead.set_user_attr("heartbeat", time.time() - 1.5 * sweep.grace_seconds)
  alive.set_user_attr("heartbeat", time.time() - 0.5 * sweep.grace_seconds)
  SweepStudy(sweep, str(tmp_path)).retry_stale()
  states = first_worker.states()
  assert (states[trial.name], states[live_trial.name]) == ("waiting", "running")


def test_the_pruner_judges_a_vectorised_group_s_trials_best_first(tmp_path, monkeypatch):
  """ASHA compares a trial with those judged before it: asked in the group's order, a bad
  first trial was judged with no one to compare with and went on."""
  sweep = sweep_lib.load_sweep(SWEEP_ASHA)
  assert (sweep.metric, sweep.mode) == ("val/loss", "min")
  study = SweepStudy(sweep, str(tmp_path))
  study.enqueue_declared()
  group = study.ask_group(3)
  judged = []
  monkeypatch.setattr(study, "should_prune",
                      lambda optuna_trial: judged.append(optuna_trial.number) or False)

  def one_epoch(configs, workdirs, prune, **kwargs):
    del configs, workdirs, kwargs
    assert prune(1, {0: {"val/loss": 5.0}, 1: {"val/loss": 3.0}, 2: {"val/loss": 4.0}}) == []
    raise KeyboardInterrupt("SIGINT")
  monkeypatch.setattr(sweep_lib.loop, "train_trials", one_epoch)
  with pytest.raises(KeyboardInterrupt):
    sweep_lib._run_group(study, sweep, group, str(tmp_path), False, None, [], False)
  assert judged == [group[1][0].number, group[2][0].number, group[0][0].number]
