"""Training end to end: RMSprop is Keras', a tiny model overfits, a resumed run equals an
uninterrupted one, a NaN loss stops it, and no step compiles after the first epoch."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seq2seq_jax import runtime
from seq2seq_jax.config import Config
from seq2seq_jax.optim import build_optimizer
from seq2seq_jax.inference import load_trained
from seq2seq_jax.loop import TrainingInterrupted, train_and_evaluate
from tests.conftest import (cli_env_for_long_runs, cli_in_process, run_cli, tiny_config, tree_digest,
                            write_tsv)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_rmsprop_is_keras_rmsprop():
  """One step of our optimizer equals Keras 3's RMSprop formula written out."""
  config = Config(learning_rate=1e-3, lr_schedule="constant", clip_norm=0.0)
  tx = build_optimizer(config, total_steps=10)
  # gradients of 1e-4 and below: there epsilon's place (inside the square root, Keras 3's)
  # changes the step many times over, where larger ones would hide it under rtol
  params = {"w": jnp.array([0.5, -1.0, 2.0, 0.3, -0.7])}
  grads = {"w": jnp.array([0.1, -0.2, 3.0, 1e-4, -3e-5])}
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  w, velocity = np.array([0.5, -1.0, 2.0, 0.3, -0.7]), np.zeros(5)
  g = np.array([0.1, -0.2, 3.0, 1e-4, -3e-5])
  for _ in range(2):
    velocity = 0.9 * velocity + 0.1 * g ** 2
    w = w - 1e-3 * g / np.sqrt(velocity + 1e-7)
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_the_learning_rate_warms_up_linearly_then_decays_to_its_end_fraction(kind):
  from seq2seq_jax.optim import learning_rate_schedule
  config = Config(learning_rate=1e-2, lr_schedule=kind, warmup_steps=10, lr_end_fraction=0.1)
  schedule = learning_rate_schedule(config, total_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-3)
  assert float(schedule(10)) == pytest.approx(1e-2)
  assert 1e-3 < float(schedule(60)) < 1e-2
  assert float(schedule(110)) == pytest.approx(1e-3)  # lr_end_fraction of the peak, not 0


def test_rmsprop_with_eps_outside_the_square_root_divides_by_sqrt_v_plus_eps():
  """rmsprop_eps_in_sqrt=False is optax's / PyTorch's g / (sqrt(v) + eps); the setting was
  ignored and every run trained with Keras' sqrt(v + eps), a step several times smaller."""
  config = Config(learning_rate=1e-3, lr_schedule="constant", clip_norm=0.0,
                  rmsprop_eps_in_sqrt=False)
  tx = build_optimizer(config, total_steps=10)
  params = {"w": jnp.array([0.5, -1.0, 0.3])}
  g = np.array([0.1, 1e-4, -3e-5])
  updates, _ = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
  velocity = 0.1 * g ** 2
  np.testing.assert_allclose(updates["w"], -1e-3 * g / (np.sqrt(velocity) + 1e-7), rtol=1e-5)


def test_a_warmup_longer_than_the_run_still_reaches_the_peak_and_decays():
  """warmup_steps=200 in a 50-step run: the warmup is cut to 49 steps, so the run reaches
  its learning rate and ends at lr_end_fraction; it had trained at a quarter of it at most."""
  from seq2seq_jax.optim import learning_rate_schedule
  config = Config(learning_rate=1e-2, lr_schedule="cosine", warmup_steps=200, lr_end_fraction=0.1)
  schedule = learning_rate_schedule(config, total_steps=50)
  assert float(schedule(0)) == 0.0
  assert float(schedule(49)) == pytest.approx(1e-2)
  assert float(schedule(50)) == pytest.approx(1e-3)


@pytest.mark.parametrize("settings", [dict(rmsprop_decay=0.5), dict(rmsprop_centered=True),
                                      dict(rmsprop_momentum=0.5), dict(clip_norm=1e-3)],
                         ids=["decay", "centered", "momentum", "clip_norm"])
def test_rmsprop_settings_are_keras_rmsprop_settings(settings):
  """Three steps with rho, centered, momentum or global_clipnorm set equal Keras 3's RMSprop
  written out: rho weighs the squared-gradient average, centered subtracts the squared mean
  gradient under the root, momentum accumulates the increments (not Nesterov's), and the
  gradients are clipped to clip_norm before RMSprop reads them."""
  config = Config(**{"learning_rate": 1e-3, "lr_schedule": "constant", "clip_norm": 0.0, **settings})
  tx = build_optimizer(config, total_steps=10)
  grads = [np.array([0.1, -0.2, 3.0]), np.array([0.3, 0.1, -1.0]), np.array([-0.2, 0.4, 2.0])]
  params = {"w": jnp.array([0.5, -1.0, 2.0])}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
  rho, w = config.rmsprop_decay, np.array([0.5, -1.0, 2.0])
  velocity, average_grad, momentum = np.zeros(3), np.zeros(3), np.zeros(3)
  for g in grads:
    if config.clip_norm:
      g = g * min(1.0, config.clip_norm / np.linalg.norm(g))
    velocity = rho * velocity + (1 - rho) * g ** 2
    average_grad = rho * average_grad + (1 - rho) * g
    squared_mean = average_grad ** 2 if config.rmsprop_centered else 0.0
    increment = 1e-3 * g / np.sqrt(velocity - squared_mean + 1e-7)
    momentum = config.rmsprop_momentum * momentum + increment
    w = w - momentum
  np.testing.assert_allclose(params["w"], w, rtol=1e-5)


def test_a_one_step_run_trains_at_its_peak_learning_rate():
  """A run of one step has no room for warmup: its step is at the peak, not at 0 (which
  would leave the model as initialised)."""
  from seq2seq_jax.optim import learning_rate_schedule
  for kind in ("cosine", "linear"):
    config = Config(learning_rate=1e-2, lr_schedule=kind, warmup_steps=200)
    assert float(learning_rate_schedule(config, total_steps=1)(0)) == pytest.approx(1e-2)


@pytest.mark.parametrize("kind, quarter", [("linear", 1e-2 - 9e-3 * 0.25),
                                           ("cosine", 1e-3 + 9e-3 * 0.5 * (1 + np.cos(np.pi / 4)))])
def test_the_decay_after_warmup_has_its_shape_over_the_remaining_steps(kind, quarter):
  """A quarter of the way from the warmup's end to the last step, the linear decay has
  gone a quarter of the way to its end, the cosine 1 - (1 + cos(pi/4)) / 2 of it."""
  from seq2seq_jax.optim import learning_rate_schedule
  config = Config(learning_rate=1e-2, lr_schedule=kind, warmup_steps=10, lr_end_fraction=0.1)
  schedule = learning_rate_schedule(config, total_steps=110)
  assert float(schedule(35)) == pytest.approx(quarter, rel=1e-5)


def test_each_training_step_draws_its_own_dropout_mask():
  """The step number is folded into the run's key: the same step draws the same mask (a
  resumed run repeats it), the next one another."""
  import functools
  from seq2seq_jax import model as model_lib
  from seq2seq_jax.steps import create_state, train_step
  from tests.test_model import two_row_batch
  config = tiny_config(attention="none", dropout=0.5)
  model = model_lib.build_model(config, 11, 13)
  tx = build_optimizer(config, 10)
  state = create_state(config, model, tx)
  step = jax.jit(functools.partial(train_step, model=model, tx=tx, config=config))
  key = jax.random.key(0)
  losses = [float(step(dict(state, step=state["step"] + n), two_row_batch(), key)[1]["loss"])
            for n in (0, 0, 1)]
  assert losses[0] == losses[1] != losses[2]


@pytest.mark.slow
def test_tiny_model_overfits_tiny_data(tmp_path, caplog):
  """Reversing short strings: a real task the model must read the source for. Without
  validation pairs (val_fraction=0) nothing is validated: no made-up val/ metrics."""
  rng = np.random.default_rng(0)
  words = {"".join(rng.choice(list("abcdef"), rng.integers(2, 6))) for _ in range(80)}
  pairs = sorted((w, w[::-1]) for w in words)
  path = write_tsv(tmp_path / "rev.tsv", pairs)
  config = tiny_config(data=f"tsv:{path}", val_fraction=0.0, test_fraction=0.0, batch_size=16,
                       num_epochs=40, learning_rate=1e-2, latent_dim=48, warmup_steps=10,
                       eval_every_epochs=40, checkpoint_every_epochs=40, log_every_steps=1000)
  workdir = str(tmp_path / "run")
  with caplog.at_level("WARNING", logger="seq2seq_jax"):
    summary = train_and_evaluate(config, workdir, progress=False)
  assert "no validation pairs (val_fraction, " in caplog.text
  assert summary == {"step": 200}
  assert not [k for r in read_metrics(workdir) for k in r if k.startswith("val/")]
  task, params, _ = load_trained(workdir, "latest")
  sources = [s for s, _ in pairs]
  outputs = task.translate(params, sources)
  assert outputs == [t for _, t in pairs]


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
  # one batch shape (bucket_width=0): four runs, each compiling its programs once
  config = tiny_config(num_epochs=3, checkpoint_every_steps=3, log_every_steps=1, dropout=0.1,
                       bucket_width=0)
  full_dir, resumed_dir = str(tmp_path / "full"), str(tmp_path / "resumed")
  full = train_and_evaluate(config, full_dir, progress=False)
  with pytest.raises(TrainingInterrupted):
    train_and_evaluate(config, resumed_dir, progress=False, stop_after_step=11)
  with pytest.raises(TrainingInterrupted):  # again, mid-epoch and after a checkpoint
    train_and_evaluate(config, resumed_dir, progress=False, stop_after_step=17)
  # what a kill between a write and its rename leaves: gone when the run resumes
  stale = os.path.join(resumed_dir, "results.json.4242-0badc0de.tmp")
  open(stale, "w").close()
  resumed = train_and_evaluate(config, resumed_dir, progress=False)
  assert not os.path.exists(stale)
  losses = lambda d: {r["step"]: r["train/loss"] for r in read_metrics(d) if "train/loss" in r}
  assert losses(full_dir) == losses(resumed_dir)
  assert full == resumed
  _, params_full, _ = load_trained(full_dir, "latest")
  _, params_resumed, _ = load_trained(resumed_dir, "latest")
  jax.tree.map(np.testing.assert_array_equal, params_full, params_resumed)


@pytest.mark.slow
def test_workdir_with_other_config_is_refused(tmp_path, trained_workdir):
  from seq2seq_jax.errors import CheckpointError
  import shutil
  workdir = str(tmp_path / "copy")
  shutil.copytree(trained_workdir, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  untouched = tree_digest(workdir)
  with pytest.raises(CheckpointError, match="different configuration.*latent_dim"):
    train_and_evaluate(tiny_config(latent_dim=24), workdir, progress=False)
  # refused before it locks the workdir: not a byte written (.lock, train.log, run.json)
  assert tree_digest(workdir) == untouched
  # an unreadable config.json: delete it to resume (it said to abandon the run)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write("garbage")
  with pytest.raises(CheckpointError, match=r"config.json' is unreadable \(.*\): delete it to "
                     r"resume the run \(its checkpoints hold its settings, and they are checked\)"):
    train_and_evaluate(tiny_config(), workdir, progress=False)
  # without config.json the newest checkpoint's settings count: other ones are named (they
  # were "damaged checkpoints", or a learning rate resumed silently), nothing is written
  os.remove(os.path.join(workdir, "config.json"))
  vocab = open(os.path.join(workdir, "vocab.json")).read()
  for change, said in ((dict(latent_dim=24), "latent_dim: 32 -> 24"),
                       (dict(learning_rate=0.1, tensorboard=True), "learning_rate: 0.003 -> 0.1")):
    with pytest.raises(CheckpointError, match=rf"different configuration \({said}; read from "
                       r"checkpoint \d+\)\. To resume it, run the same command as before"):
      train_and_evaluate(tiny_config(**change), workdir, progress=False)
    assert not os.path.exists(os.path.join(workdir, "config.json"))
    assert not os.path.exists(os.path.join(workdir, "tensorboard"))  # no live events either
    assert open(os.path.join(workdir, "vocab.json")).read() == vocab
  train_and_evaluate(tiny_config(), workdir, progress=False)  # the run's own settings resume
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_workdir_contents(trained_workdir):
  names = set(os.listdir(trained_workdir))
  assert {"config.json", "run.json", "metrics.jsonl", "checkpoints", "results.json"} <= names
  records = read_metrics(trained_workdir)
  # results.json: the final numbers, and sacrebleu's signatures beside them (not in metrics.jsonl)
  results = json.load(open(os.path.join(trained_workdir, "results.json")))
  assert all(isinstance(v, float) for k, v in results.items() if "/" in k)
  assert set(results["signatures"]) == {"bleu", "chrf"}
  assert all("nrefs:1|" in s and "|version:" in s for s in results["signatures"].values())
  assert not any("signatures" in r for r in records)
  epoch_records = [r for r in records if "val/loss" in r and "final" not in r]
  assert len(epoch_records) == 2
  for key in ("step", "epoch", "train/loss", "val/loss", "val/token_accuracy", "val/exact_match"):
    assert key in epoch_records[-1]
  run = json.load(open(os.path.join(trained_workdir, "run.json")))
  assert {"versions", "devices", "mesh", "command"} <= set(run)
  # the command line ran on the CPU devices runtime.py chose (one per core on a CPU)
  assert run["num_devices"] == runtime.requested_cpu_devices(tiny_config().batch_size)
  # at least two checkpoints are kept (tiny keeps 2)
  steps = [d for d in os.listdir(os.path.join(trained_workdir, "checkpoints")) if d.isdigit()]
  assert len(steps) >= 2


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
  from seq2seq_jax import steps
  from seq2seq_jax.loop import NonFiniteLoss
  real_step = steps.train_step

  def step_that_diverges(state, batch, base_rng, **kwargs):
    new_state, metrics = real_step(state, batch, base_rng, **kwargs)
    broken = jnp.where(state["step"] >= 9, jnp.nan, metrics["loss"])
    return new_state, dict(metrics, loss=broken)

  monkeypatch.setattr(steps, "train_step", step_that_diverges)
  workdir = str(tmp_path / "nan")
  # one shape per epoch: 200 pairs / 32 = 7 steps, a checkpoint at the end of epoch 1
  with pytest.raises(NonFiniteLoss, match=r"nan at step 10\. Last good checkpoint: 7"):
    train_and_evaluate(tiny_config(num_epochs=3, log_every_steps=1, bucket_width=0), workdir,
                       progress=False)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["7"]


@pytest.mark.slow
def test_no_compilation_after_the_first_epoch(tmp_path):
  """Length buckets fix the set of batch shapes, so epochs 2 and 3 reuse every train-step
  program that epoch 1 compiled (one a shape): counted, not timed."""
  rng = np.random.default_rng(1)
  pairs = sorted({("".join(rng.choice(list("abcdefgh"), rng.integers(1, 16))),
                   "".join(rng.choice(list("xyz"), rng.integers(1, 16)))) for _ in range(200)})
  path = write_tsv(tmp_path / "varied.tsv", pairs)
  # 2 x 2 (source, target) length buckets of width 8: random batches of them would give
  # other widths from epoch to epoch if the buckets did not fix them
  config = tiny_config(data=f"tsv:{path}", bucket_width=8, batch_size=16, num_epochs=3,
                       max_source_len=16, max_target_len=16, log_every_steps=1000)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir, progress=False)
  compilations = [r["train/compilations"] for r in read_metrics(workdir) if "epoch" in r
                  and "train/compilations" in r]
  assert len(compilations) == 3 and compilations[0] > 3, compilations
  assert compilations[1:] == [0, 0], compilations


def _identifier_pairs(rng, count):
  """Help-like sentences naming a spreadsheet function and a number, English -> French:
  both must be copied."""
  functions = ["SUMIF", "VLOOKUP", "COUNTIF", "HLOOKUP", "AVERAGE", "CONCAT", "ROUND", "INDEX",
               "MATCH", "TRIM", "DATEDIF", "NETWORKDAYS"]
  templates = [("The {f} function returns {n} values.", "La fonction {f} renvoie {n} valeurs."),
               ("Use {f} with {n} cells.", "Utilisez {f} avec {n} cellules."),
               ("Enter {n} in the {f} dialog.", "Saisissez {n} dans la boîte de dialogue {f}.")]
  pairs = set()
  while len(pairs) < count:
    (en, fr), f, n = templates[rng.integers(3)], rng.choice(functions), int(rng.integers(1, 1000))
    pairs.add((en.format(f=f, n=n), fr.format(f=f, n=n)))
  pairs = sorted(pairs)
  rng.shuffle(pairs)
  return pairs


@pytest.mark.slow
def test_a_joint_vocabulary_with_tied_embeddings_copies_function_names_and_numbers(tmp_path,
                                                                                   capsys):
  """A small model on one joint SentencePiece vocabulary with tied embeddings, trained on
  help-like sentences: 90 held-out sentences (their function names seen in other sentences,
  their numbers made of pieces seen in other numbers) keep their function name (SUMIF,
  VLOOKUP...) and their number.

  The model is the default one's kind (bidirectional encoder, attention with input
  feeding) at a small size: on these data a model learns to copy numbers suddenly. With
  the data generator's seed 0 (the test's) it does so by epoch 7 (val exact match 1.0), and
  14 epochs leave the margin. Other data seeds, measured 2026-12-06: 1, 3 and 4 by epoch
  5; seed 2's data are learnt slower (0.86 at epoch 14, 21 of 90 held out lost), so the
  data are fixed, not drawn.

  Trained by the command line, whose programs compile at XLA's default optimisation
  (`cli_env_for_long_runs`): its 2,500 steps run in half the time they take in the suite's
  processes, whose programs compile fast and run slower. On one CPU device: batches of 16
  are too small to gain from two (30.6 s against 35.0 s on 2 cores, the same numbers)."""
  rng = np.random.default_rng(0)
  pairs = _identifier_pairs(rng, 3090)
  held_out, train = pairs[:90], pairs[90:]
  path = write_tsv(tmp_path / "ids.tsv", train)
  settings = dict(val_fraction=0.05, test_fraction=0.0,
                  tokenizer="sentencepiece", sentencepiece_joint=True, vocab_size=150,
                  tie_embeddings=True, tie_output=True, embed_dim=64, latent_dim=64,
                  bidirectional_encoder=True, input_feeding=True,
                  max_source_len=40, max_target_len=40, batch_size=16, num_epochs=14,
                  learning_rate=1e-2, warmup_steps=20, log_every_steps=1000,
                  best_metric="val/exact_match")
  workdir = str(tmp_path / "run")
  sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
  result = run_cli("train", "--config", "configs/tiny.py", "--data", f"tsv:{path}",
                   "--workdir", workdir, *sets,
                   env_extra=dict(cli_env_for_long_runs(), SEQ2SEQ_JAX_CPU_DEVICES="1"))
  assert result.returncode == 0, result.stderr[-3000:]
  translator, params, _ = load_trained(workdir)
  outputs = translator.translate(params, [s for s, _ in held_out])
  lost = []
  for (source, _), output in zip(held_out, outputs):
    function, number = re.search(r"[A-Z]{4,}", source).group(), re.search(r"\d+", source).group()
    words = output.split()
    if not ((function in words or function + "." in words)
            and re.search(rf"\b{number}\b", output)):
      lost.append((source, output))
  assert len(lost) <= 4, lost  # 95% of the held-out sentences at least
  # trained with test_fraction=0: evaluate's default split is empty, and it says why
  code, out, err = cli_in_process(capsys, "evaluate", "--workdir", workdir)
  assert code == 2 and out == "" and err.strip().splitlines() == [
      f"seq2seq-jax evaluate: error: split 'test' of tsv:{path} is empty. The run was trained "
      "with test_fraction=0, so it has no test split: score another split, or a file of test "
      "pairs with --data FILE --split all."]
