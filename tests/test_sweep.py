"""Sweeps: declaration, resumable runs, vectorised == sequential, results tables, plots."""

import csv
import dataclasses
import json
import math
import os
import shutil
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax import sweep as sweep_lib
from seq2seq_jax import tracking
from seq2seq_jax.config import Config
from seq2seq_jax.errors import UserError
from seq2seq_jax.inference import load_trained
from seq2seq_jax.loop import TrainingInterrupted
from tests.conftest import ROOT, event_scalars, run_cli, tiny_config

SWEEP_TINY = os.path.join(ROOT, "configs", "sweep_tiny.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Numbers that depend on the trained values (not on timing).
COMPARED = ("train/loss", "train/token_accuracy", "grad_norm", "lr", "val/loss",
            "val/token_accuracy", "val/exact_match", "test/loss", "test/token_accuracy")


def assert_png(path):
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == PNG_SIGNATURE, path
  width, height = struct.unpack(">II", head[16:24])
  assert width >= 600 and height >= 400


def file_times(directory):
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


def assert_same_run(dir_a, dir_b, rtol):
  """Every logged metric of two runs agrees within rtol, step by step."""
  records_a, records_b = tracking.read_metrics(dir_a), tracking.read_metrics(dir_b)
  assert len(records_a) == len(records_b) > 0
  for a, b in zip(records_a, records_b):
    assert a["step"] == b["step"]
    for key in COMPARED:
      assert (key in a) == (key in b), key
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-6, err_msg=f"{key} @ {a['step']}")


# ---------------------------------------------------------------------------
# Declaration
# ---------------------------------------------------------------------------

def test_grid_random_and_list_declarations():
  base = Config()
  grid = sweep_lib.make_sweep(base, {"grid": {"learning_rate": [1e-3, 3e-3], "seed": [0, 1]}})
  assert [t.name for t in grid.trials] == [
      "learning_rate=0.001,seed=0", "learning_rate=0.001,seed=1",
      "learning_rate=0.003,seed=0", "learning_rate=0.003,seed=1"]
  assert grid.trials[3].config.learning_rate == 3e-3 and grid.trials[3].config.seed == 1
  assert grid.trials[3].config.latent_dim == base.latent_dim
  assert (grid.metric, grid.mode, grid.vectorize) == ("val/exact_match", "max", False)

  spec = {"random": {"learning_rate": ("log_uniform", 1e-4, 1e-2), "dropout": [0.0, 0.1],
                     "num_layers": ("int", 1, 3)}, "num_trials": 5, "seed": 3,
          "metric": "val/loss"}
  drawn = sweep_lib.make_sweep(base, spec)
  assert [t.name for t in drawn.trials] == [t.name for t in sweep_lib.make_sweep(base, spec).trials]
  assert drawn.mode == "min"
  for trial in drawn.trials:
    assert 1e-4 <= trial.config.learning_rate <= 1e-2
    assert trial.config.dropout in (0.0, 0.1) and trial.config.num_layers in (1, 2, 3)
    assert float(f"{trial.config.learning_rate:.3g}") == trial.config.learning_rate

  listed = sweep_lib.make_sweep(base, {"trials": [{"data": "tsv:/tmp/a b.tsv"}, {"latent_dim": 64}]})
  assert [t.name for t in listed.trials] == ["data=tsv__tmp_a_b.tsv", "latent_dim=64"]
  # a grid of NumPy scalars (np.logspace, np.arange) as its Python values: numpy 2 writes
  # repr(np.float64(0.001)) as "np.float64(0.001)", which --set refused
  numpy_grid = sweep_lib.make_sweep(base, {"grid": {"learning_rate": np.array([1e-3, 3e-3]),
                                                    "seed": list(np.arange(2))}})
  assert [t.name for t in numpy_grid.trials] == [t.name for t in grid.trials]
  assert [t.config for t in numpy_grid.trials] == [t.config for t in grid.trials]
  listed = sweep_lib.make_sweep(base, {"trials": [{"learning_rate": np.float64(0.003)}]})
  assert [t.name for t in listed.trials] == ["learning_rate=0.003"]


def test_declaration_errors_name_the_problem():
  with pytest.raises(UserError, match="Did you mean learning_rate"):
    sweep_lib.make_sweep(Config(), {"grid": {"learning_rat": [1e-3]}})
  with pytest.raises(UserError, match="exactly one of"):
    sweep_lib.make_sweep(Config(), {"grid": {"seed": [0]}, "trials": [{}]})
  with pytest.raises(UserError, match="non-empty list"):
    sweep_lib.make_sweep(Config(), {"grid": {"seed": 0}})
  with pytest.raises(UserError, match="must be in"):
    sweep_lib.make_sweep(Config(), {"grid": {"dropout": [0.5, 1.5]}})
  with pytest.raises(UserError, match="swept by"):
    sweep_lib.load_sweep(SWEEP_TINY, ["learning_rate=0.1"])
  with pytest.raises(UserError, match="no get_sweep"):
    sweep_lib.load_sweep(os.path.join(ROOT, "configs", "tiny.py"))
  for seed in (-1, 2**32 - 2**22, 1.5):  # Optuna's samplers would fail on it once it ran
    with pytest.raises(UserError, match=r"seed must be a whole number from 0 to 4290772991 "):
      sweep_lib.make_sweep(Config(), {"search": {"dropout": [0.0]}, "num_trials": 1, "seed": seed})
  import numpy as np
  assert sweep_lib.make_sweep(Config(), {"search": {"dropout": [0.0]}, "num_trials": 1,
                                         "seed": np.int64(7)}).seed == 7  # NumPy's ints too


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"learning_rate": [1e-3]}, "metric": "val/acuracy"},
     "metric must be one of the validation metrics val/loss, .*val/bleu; got 'val/acuracy'"),
    ({"grid": {"learning_rate": [1e-3]}, "metric": None}, "metric must be one of"),
    ({"grid": [("learning_rate", [1e-3])]}, "'grid' must be a non-empty dict"),
    ({"grid": {}}, "'grid' must be a non-empty dict"),
    ({"trials": []}, "'trials' must be a non-empty list"),
    ({"search": {"dropout": [0.0]}, "num_trials": 1, "sampler_settings": {"seed": 3}},
     "sampler_settings: give the sweep's own 'seed' instead"),
    ({"random": {}, "num_trials": 2}, "'random' must be a non-empty dict"),
    ({"grid": {"learning_rate": [1e-3]}, "vectorize": "no"}, "vectorize must be True or False"),
    ({"grid": {"learning_rate": [1e-3]}, "group_size": 0.5},
     "group_size must be a positive whole number, got 0.5"),
    ({"grid": {"learning_rate": [1e-3]}, "heartbeat_seconds": 30, "grace_seconds": 1},
     r"heartbeat_seconds \(30\) must be less than grace_seconds \(1\)"),
    ({"search": {"dropout": [0.0]}, "num_trials": 1, "sampler_settings": {"n_startup": 1}},
     "sampler_settings: n_startup is no argument of sampler 'tpe' .*n_startup_trials"),
    ({"grid": {"dropout": [0.0]}, "sampler_settings": {"n_startup_trials": 1}},
     "no argument of sampler 'random' .*it takes none"),
    ({"search": {"dropout": [0.0]}, "num_trials": 1, "pruner": "asha",
      "pruner_settings": {"min_resourc": 1}}, "min_resourc is no argument of pruner 'asha'"),
    ({"search": {"dropout": [0.0]}, "num_trials": 1, "pruner": "asha",
      "pruner_settings": {"min_resource": -1}}, "pruner_settings .*min_resource"),
    # a swept key or value is named as the sweep file's, not as a --set the user never gave
    ({"grid": {"learning_rat": [1e-3]}}, "unknown config key 'learning_rat' in the sweep's "
                                         "swept values. Did you mean learning_rate"),
    ({"grid": {"learning_rate": ["fast"]}},
     "the sweep's swept values: learning_rate=fast: 'fast' is not a valid float"),
    # a range partly outside a key's limits: the first draw there stopped it, on every rerun
    ({"search": {"dropout": ("uniform", 0.9, 1.02)}, "num_trials": 8},
     r"^the sweep: search 'dropout' \('uniform', 0.9, 1.02\) reaches 1.02, which is not a "
     r"valid setting: .*dropout.* must be in \[0, 1\)"),
    ({"search": {"num_layers": ("int", 0, 3)}, "num_trials": 8}, "reaches 0, which is not"),
    ({"search": {"dropout": [0.1, 1.5]}, "num_trials": 8}, r"\[0.1, 1.5\] offers 1.5"),
    # a misspelt kind was three choices (random) or a linear range (search)
    ({"random": {"learning_rate": ("loguniform", 1e-4, 1e-2)}, "num_trials": 2},
     "'learning_rate': unknown kind 'loguniform' .* \\(did you mean log_uniform\\?\\)"),
    ({"search": {"learning_rate": ("loguniform", 1e-4, 1e-2)}, "num_trials": 2},
     "unknown kind 'loguniform'"),
    ({"search": {"learning_rate": ("uniform", "a", "b")}, "num_trials": 2},
     "expected \\(kind, low, high\\) with low < high, finite numbers"),
    ({"random": {"num_layers": ("int", 1, 2.5)}, "num_trials": 2}, "whole ones for int"),
    ({"random": {"num_layers": ("int", 1, 4, 1)}, "num_trials": 2}, "expected \\(kind, low, high\\)"),
    ({"search": {"num_layers": ("uniform", 1, 4)}, "num_trials": 2},  # a float range, int key
     r"search 'num_layers' \('uniform', 1, 4\) reaches 2.91, which .*is not a valid int"),
    ({"search": {"latnet_dim": [8, 16], "dropout": [0.0, 0.1]}, "num_trials": 2},
     "search 'latnet_dim' .*unknown config key 'latnet_dim'"),
    # an enqueued trial outside the space: a traceback (choices), or trained as given (range)
    ({"search": {"learning_rate": [1e-3, 1e-2]}, "num_trials": 2,
      "enqueue": [{"learning_rate": 5.0}]},
     r"enqueued learning_rate=5.0 is outside its search space \[0.001, 0.01\]"),
    ({"search": {"learning_rate": ("log_uniform", 1e-4, 1e-2)}, "num_trials": 2,
      "enqueue": [{"learning_rate": 5.0}]}, "enqueued learning_rate=5.0 is outside"),
])
def test_declaration_mistakes_are_refused_before_anything_runs(spec, message):
  """Each was accepted and then trained without the setting (a misspelt metric ranked
  nothing, group_size 0.5 trained no trial), or stopped later with a traceback."""
  with pytest.raises(UserError, match=message):
    sweep_lib.make_sweep(Config(), spec, "the sweep")


def test_a_search_s_values_are_checked_together_with_the_other_keys_values():
  """decoder_input=repeat needs attention=none: a search offering both is valid (each value
  is valid with some value of the others); an int range given as floats still works;
  choices written as text are typed before an enqueued trial is compared with them."""
  joint = {"search": {"decoder_input": ["previous", "repeat"], "attention": ["none"]},
           "num_trials": 2}
  assert sweep_lib.make_sweep(Config(), joint).space["decoder_input"] == ["previous", "repeat"]
  with pytest.raises(UserError, match="search 'decoder_input' \\['previous', 'repeat'\\] offers "
                                      "'repeat', which is not a valid setting"):
    sweep_lib.make_sweep(Config(), {"search": {"decoder_input": ["previous", "repeat"],
                                               "attention": ["general"]}, "num_trials": 2})
  ints = sweep_lib.make_sweep(Config(), {"search": {"num_layers": ("int", 1.0, 2.0)},
                                         "num_trials": 2})
  assert ints.space["num_layers"] == ("int", 1, 2)
  assert {t.overrides["num_layers"] for t in sweep_lib.make_sweep(
      Config(), {"random": {"num_layers": ("int", 1.0, 2.0)}, "num_trials": 6}).trials} <= {1, 2}
  texts = sweep_lib.make_sweep(Config(), {"search": {"learning_rate": ["1e-3", "1e-2"]},
                                          "num_trials": 2, "enqueue": [{"learning_rate": "1e-3"}]})
  assert texts.trials[0].overrides == {"learning_rate": 1e-3}
  assert texts.space == {"learning_rate": [1e-3, 1e-2]}  # typed, as Optuna must hold them
  assert sweep_lib.make_sweep(Config(), {"random": {"numbers_sampling": ("uniform", "digits")},
                                         "num_trials": 2}).trials  # a tuple of two words: choices


def test_a_tuple_of_choices_is_choices_in_a_search_as_in_a_random_sweep():
  """(1e-3, 3e-3, 1e-2) in a search was a uniform range from 3e-3 to 1e-2 (and a pair, a
  traceback); a random sweep draws such a tuple's values as choices."""
  for choices in ((1e-3, 3e-3, 1e-2), (1e-3, 1e-2), ("none", "dot", "additive")):
    key = "attention" if isinstance(choices[0], str) else "learning_rate"
    searched = sweep_lib.make_sweep(Config(), {"search": {key: choices}, "num_trials": 2})
    assert searched.space == {key: list(choices)}
    drawn = sweep_lib.make_sweep(Config(), {"random": {key: choices}, "num_trials": 9})
    assert {t.overrides[key] for t in drawn.trials} <= set(choices)
  ranged = sweep_lib.make_sweep(Config(), {"search": {"learning_rate": ("uniform", 1e-3, 1e-2)},
                                           "num_trials": 2, "enqueue": [{"learning_rate": 1e-2}]})
  assert ranged.space == {"learning_rate": ("uniform", 1e-3, 1e-2)}  # its end is in it


def test_a_stopped_trial_of_a_vectorised_group_keeps_its_state_to_the_bit():
  """A diverged or pruned trial trains on in the group's program (its shape is fixed),
  inactive: its parameters, optimizer state and step stay as they were."""
  import functools
  from seq2seq_jax import model as model_lib
  from seq2seq_jax.optim import build_optimizer
  from seq2seq_jax.steps import create_state, vectorized_train_step
  from tests.test_model import two_row_batch
  config = tiny_config(attention="none", warmup_steps=0)
  model = model_lib.build_model(config, 11, 13)
  state = create_state(config, model, build_optimizer(config, 10))
  states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  hyper = {"learning_rate": jnp.array([1e-2, 3e-3]), "active": jnp.array([True, False])}
  step = jax.jit(functools.partial(vectorized_train_step, model=model, config=config,
                                   total_steps=10))
  new, _ = step(states, two_row_batch(), jax.random.key(0), hyper)
  jax.tree.map(lambda after, before: np.testing.assert_array_equal(after[1], before[1]), new, states)
  assert int(new["step"][0]) == 1 and not np.array_equal(new["params"]["output_dense"]["bias"][0],
                                                         states["params"]["output_dense"]["bias"][0])


def test_the_metric_s_direction_and_a_series_sweep_s_default_metric():
  """CER, MSE and MAE are errors: lower is better, by default and in the results' best
  column; a series sweep that names no metric ranks by its validation loss."""
  assert sweep_lib.make_sweep(Config(), {"grid": {"dropout": [0.0]}, "metric": "val/cer"}).mode == "min"
  series = dataclasses.replace(Config(), data="series:x.csv", input_mode="real",
                               decoder_input="repeat", attention="none", best_metric="val/loss")
  assert (sweep_lib.make_sweep(series, {"grid": {"dropout": [0.0]}}).metric,
          sweep_lib.make_sweep(series, {"grid": {"dropout": [0.0]}}).mode) == ("val/loss", "min")
  assert sweep_lib.make_sweep(Config(), {"trials": [{}, {"dropout": 0.1}]}).trials[0].name == "base"


def test_a_long_trial_name_stays_a_directory_name_and_its_trial_s_own():
  values = {f"k{i}": 0.1234567890123456 + i for i in range(20)}
  name = sweep_lib.trial_name(values)
  assert len(name) == sweep_lib.MAX_NAME == 255 and name.startswith("k0=0.1234567890123456,")
  assert name != sweep_lib.trial_name(dict(values, k19=1.0))
  assert sweep_lib.trial_name({"learning_rate": 0.003}) == "learning_rate=0.003"


def test_only_shape_free_values_share_a_program():
  base = Config()
  key = lambda **kw: sweep_lib.vmap_group_key(dataclasses.replace(base, **kw))
  assert key(learning_rate=1e-2, dropout=0.3, rmsprop_decay=0.95, clip_norm=5.0) == key()
  assert key(latent_dim=64) != key()
  assert key(num_layers=2) != key()
  assert key(seed=1) != key()  # a seed also draws the data and its order
  assert key(clip_norm=0.0) != key()  # no clipping: another optimizer state


# ---------------------------------------------------------------------------
# The vectorised step
# ---------------------------------------------------------------------------

def test_dropout_at_a_traced_rate_equals_flax_dropout():
  """The model's dropout takes its rate at call time, traced in a vectorised group: with a
  Python rate it is nn.Dropout exactly; traced, it drops the same units."""
  from seq2seq_jax.model import Dropout, traced_dropout_rate

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, rate):
      drop = Dropout(name="dropout")
      return drop(nn.Dense(8)(drop(x, rate, True)), rate, True)

  class FlaxNet(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, x):
      drop = nn.Dropout(self.rate, name="dropout")
      return drop(nn.Dense(8)(drop(x, deterministic=False)), deterministic=False)

  x = jax.random.normal(jax.random.key(0), (4, 8))
  params = FlaxNet(0.0).init(jax.random.key(1), x)
  rngs = {"dropout": jax.random.key(2)}
  # jitted with the arrays as arguments, as in training (constants would be folded)
  traced = jax.jit(lambda params, x, rate: Net().apply(params, x, rate, rngs=rngs))
  for rate in (0.0, 0.3, 0.33):
    expected = jax.jit(lambda params, x: FlaxNet(rate).apply(params, x, rngs=rngs))(params, x)
    np.testing.assert_array_equal(Net().apply(params, x, rate, rngs=rngs),
                                  FlaxNet(rate).apply(params, x, rngs=rngs))
    got = traced(params, x, traced_dropout_rate(rate))
    np.testing.assert_array_equal(got == 0, expected == 0)  # the same units dropped
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # XLA may fuse the scaling otherwise


@pytest.mark.slow
def test_optimizer_with_array_hyperparameters_equals_build_optimizer():
  """learning_rate, rmsprop_decay and clip_norm as per-trial arrays under vmap."""
  from seq2seq_jax.optim import build_optimizer, build_optimizer_with

  base = Config(lr_schedule="cosine", warmup_steps=2, lr_end_fraction=0.1)
  configs = [dataclasses.replace(base, learning_rate=1e-2, rmsprop_decay=0.8, clip_norm=0.5),
             dataclasses.replace(base, learning_rate=3e-3, rmsprop_decay=0.95, clip_norm=20.0)]
  params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([0.1])}
  grads = [{"w": jnp.array([0.1, -0.2, 3.0]) * k, "b": jnp.array([-1.0]) * k} for k in (1, 2, 3)]
  hyper = {key: jnp.array([getattr(c, key) for c in configs], jnp.float32)
           for key in ("learning_rate", "rmsprop_decay", "clip_norm")}

  def run(tx, params):
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, params)
      params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params, state

  vmapped, vmapped_states = jax.vmap(
      lambda h: run(build_optimizer_with(base, 10, **h), params))(hyper)
  for i, config in enumerate(configs):
    expected, state = run(build_optimizer(config, 10), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-6), vmapped, expected)
    assert jax.tree.structure(state) == jax.tree.structure(
        jax.tree.map(lambda x: x[i], vmapped_states))  # checkpoints restore either way


# ---------------------------------------------------------------------------
# A whole sweep: configs/sweep_tiny.py
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """configs/sweep_tiny.py interrupted at step 3 (in-process), then finished by the CLI."""
  workdir = str(tmp_path_factory.mktemp("sweep") / "tiny")
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  with pytest.raises(TrainingInterrupted) as interrupted:
    sweep_lib.run_sweep(sweep, workdir, progress=False, stop_after_step=3)
  assert interrupted.value.stopped == [None] * 4  # every trial was still training
  for trial in sweep.trials:
    assert sweep_lib.trial_status(os.path.join(workdir, trial.name)) == "started"
  result = run_cli("sweep", "--config", SWEEP_TINY, "--workdir", workdir)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "resumed 4 trials from checkpoint 3" in result.stdout
  return sweep, workdir, result.stdout


@pytest.mark.slow
def test_sweep_writes_one_workdir_per_trial_and_tables(swept):
  sweep, workdir, stdout = swept
  assert len(sweep.trials) == 4 and sweep.vectorize
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["trial"] for r in rows) == sorted(t.name for t in sweep.trials)
  for row in rows:
    trial = next(t for t in sweep.trials if t.name == row["trial"])
    assert float(row["learning_rate"]) == trial.config.learning_rate
    assert float(row["dropout"]) == trial.config.dropout
    assert int(row["steps"]) == 14 and row["vmap_trials"] == "4" and row["status"] == "done"
    assert float(row["wall_seconds"]) > 0 and float(row["samples_per_sec"]) > 0
    records = tracking.read_metrics(os.path.join(workdir, row["trial"]))
    val = [r["val/token_accuracy"] for r in records if "train/epoch_seconds" in r]
    assert float(row["final_val_token_accuracy"]) == pytest.approx(val[-1])
    assert float(row["best_val_token_accuracy"]) == pytest.approx(max(val))
  best = [float(r["best_val_token_accuracy"]) for r in rows]
  assert best == sorted(best, reverse=True)  # sorted by the sweep's metric, best first
  with open(os.path.join(workdir, "results.md")) as f:
    table = [line for line in f if line.startswith("| learning_rate=")]
  assert [line.split(" | ")[0][2:] for line in table] == [r["trial"] for r in rows]
  assert "| trial | learning_rate | dropout |" in stdout  # the table is printed too
  assert_png(os.path.join(workdir, "curves.png"))


@pytest.mark.slow
def test_vectorised_trial_equals_its_sequential_run(swept, tmp_path):
  """The trial furthest from the group's first config, alone and without vmap."""
  sweep, workdir, _ = swept
  trial = sweep.trials[-1]
  assert (trial.config.learning_rate, trial.config.dropout) == (1e-2, 0.2)
  sequential = str(tmp_path / "sequential")
  sweep_lib.run_sweep(dataclasses.replace(sweep, trials=[trial]), sequential, vectorize=False,
                      progress=False)
  with open(os.path.join(sequential, trial.name, "trial.json")) as f:
    assert json.load(f)["vmap_trials"] == 1
  assert_same_run(os.path.join(workdir, trial.name), os.path.join(sequential, trial.name), 1e-4)


@pytest.mark.slow
def test_rerunning_a_finished_sweep_redoes_nothing(swept):
  _, workdir, _ = swept
  before = file_times(workdir)
  result = run_cli("sweep", "--config", SWEEP_TINY, "--workdir", workdir)
  assert result.returncode == 0, result.stderr
  assert "4 done, 0 to run" in result.stdout
  after = file_times(workdir)
  assert before.keys() == after.keys()
  changed = [p for p in before if before[p] != after[p]]
  assert all(os.path.dirname(p) == workdir for p in changed), changed  # only the tables


@pytest.mark.slow
def test_a_trial_workdir_translates_and_plots(swept, tmp_path):
  sweep, workdir, _ = swept
  trial_dir = os.path.join(workdir, sweep.trials[0].name)
  task, params, _ = load_trained(trial_dir)
  expected = task.translate(params, ["twelve", "three hundred and five"])
  result = run_cli("translate", "--workdir", trial_dir, "twelve", "three hundred and five")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == expected
  out = str(tmp_path / "run.png")
  plotted = run_cli("plot", "--workdir", trial_dir, "--out", out)
  assert plotted.returncode == 0, plotted.stderr
  assert plotted.stdout.strip() == out
  assert_png(out)
  sweep_png = tracking.plot_workdir(workdir, str(tmp_path / "sweep.png"))  # a sweep: every trial
  assert_png(sweep_png)


@pytest.mark.slow
def test_interrupted_sweep_continues_only_unfinished_trials(swept, tmp_path):
  sweep, finished, _ = swept
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished, workdir)
  unfinished = [sweep.trials[1].name, sweep.trials[2].name]
  for name in unfinished:
    os.remove(os.path.join(workdir, name, "results.json"))
  before = file_times(workdir)
  sweep_lib.run_sweep(sweep, workdir, progress=False)
  after = file_times(workdir)
  for path, mtime in before.items():
    trial = os.path.relpath(path, workdir).split(os.sep)[0]
    if trial not in unfinished and os.path.dirname(path) != workdir:
      assert after[path] == mtime, path  # finished trials untouched
  for name in unfinished:
    with open(os.path.join(finished, name, "results.json")) as f:
      expected = json.load(f)
    with open(os.path.join(workdir, name, "results.json")) as f:
      results = json.load(f)
    for key in ("signatures", "data"):  # strings and what was read, beside the numbers
      assert results.pop(key) == expected.pop(key)
    assert results == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_and_the_others_go_on(tmp_path):
  base = sweep_lib.load_sweep(SWEEP_TINY).base
  base = dataclasses.replace(base, num_epochs=1, latent_dim=8, embed_dim=4, attention="none",
                             lr_schedule="constant", log_every_steps=1, numbers_train=64,
                             numbers_val=4, numbers_test=4)
  sweep = sweep_lib.make_sweep(base, {"grid": {"learning_rate": [1e-3, 1e30]},
                                      "metric": "val/loss", "vectorize": True})
  rows = sweep_lib.run_sweep(sweep, str(tmp_path), progress=False)
  assert [(r["trial"], r["status"]) for r in rows] == [
      ("learning_rate=0.001", "done"), ("learning_rate=1e+30", "failed")]
  diverged = str(tmp_path / "learning_rate=1e+30")
  with open(os.path.join(diverged, "trial.json")) as f:
    assert "loss is nan" in json.load(f)["error"]
  assert sweep_lib.trial_status(diverged) == "failed"  # not retried by the next run
  assert not os.path.exists(os.path.join(diverged, "results.json"))


def test_a_trial_another_process_trains_is_left_to_it_and_the_group_goes_on(tmp_path):
  """Its workdir locked by another process (a worker whose heartbeat came late, so the
  study handed out a copy): that trial is left alone, files and all, and its vmap
  group-mates train; the sweep does not fail."""
  from seq2seq_jax import workdir as workdir_lib
  base = sweep_lib.load_sweep(SWEEP_TINY).base
  base = dataclasses.replace(base, num_epochs=1, latent_dim=8, embed_dim=4, attention="none",
                             lr_schedule="constant", numbers_train=64, numbers_val=4,
                             numbers_test=4)
  sweep = sweep_lib.make_sweep(base, {"grid": {"learning_rate": [1e-3, 2e-3, 3e-3]},
                                      "metric": "val/loss", "vectorize": True})
  busy = tmp_path / "learning_rate=0.002"
  busy.mkdir()
  with workdir_lib.exclusive(str(busy)):
    rows = sweep_lib.run_sweep(sweep, str(tmp_path), progress=False)
  assert sorted((r["trial"], r["status"]) for r in rows) == [  # the table: best first
      ("learning_rate=0.001", "done"), ("learning_rate=0.003", "done")]
  assert os.listdir(busy) == [".lock"]


@pytest.mark.slow
def test_tensorboard_export_round_trips(swept):
  pytest.importorskip("tensorboardX")
  sweep, workdir, _ = swept
  trial_dir = os.path.join(workdir, sweep.trials[0].name)
  (logdir,) = tracking.export_tensorboard(trial_dir)
  scalars = {(tag, step): value for tag, values in event_scalars(logdir).items()
             for step, value in values}
  for record in tracking.read_metrics(trial_dir):
    if "val/loss" in record and not record.get("final"):
      assert scalars[("val/loss", record["step"])] == pytest.approx(record["val/loss"], rel=1e-6)
  assert any(tag == "final/test/loss" for tag, _ in scalars)
  # at a sweep's end (stale_only), a trial exported since its last metrics is left as it
  # is; one whose metrics.jsonl is newer than its events is exported again
  written = lambda: sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(logdir)
                           if e.name.startswith("events."))
  before = written()
  assert tracking.export_tensorboard(workdir, stale_only=True)[0] == logdir and written() == before
  later = before[0][1] / 1e9 + 10
  os.utime(os.path.join(trial_dir, "metrics.jsonl"), (later, later))
  tracking.export_tensorboard(workdir, stale_only=True)
  assert written() != before and len(written()) == len(before)


def test_a_sweep_whose_values_changed_is_refused_in_its_old_workdir(tmp_path):
  """Optuna keeps one set of values per key for a study: a changed declaration is told to
  use a new workdir before anything runs."""
  workdir = str(tmp_path / "sweep")
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump({"keys": ["learning_rate", "dropout"],
               "space": {"learning_rate": [0.003, 0.01], "dropout": [0.0, 0.5]}}, f)
  with pytest.raises(UserError, match=r"changed \(dropout\).*new --workdir"):
    sweep_lib.run_sweep(sweep, workdir, progress=False)
  assert os.listdir(workdir) == ["sweep.json"]  # nothing started


def test_a_sweep_whose_objective_changed_is_refused_and_so_is_a_worker_joining_changed(tmp_path):
  """One study optimises one metric one way: another metric's values told to it would mix
  losses with accuracies in TPE's model, the pruner's comparisons and the best trial. A
  worker joining (`--worker`) is held to the same declaration as `sweep` itself."""
  workdir = str(tmp_path / "sweep")
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  os.makedirs(workdir)
  saved = {"keys": sweep.keys, "space": sweep_lib._space_json(sweep.space),
           "metric": "val/loss", "mode": "min"}
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(saved, f)
  with pytest.raises(UserError, match=r"objective changed \(val/loss min -> "
                                      rf"{sweep.metric} {sweep.mode}\).*new --workdir"):
    sweep_lib.run_sweep(sweep, workdir, progress=False)
  with pytest.raises(UserError, match=r"objective changed"):
    sweep_lib.work(sweep, workdir, progress=False)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(dict(saved, metric=sweep.metric, mode=sweep.mode,
                   space=dict(saved["space"], dropout=[0.0, 0.5])), f)
  with pytest.raises(UserError, match=r"declared keys or values changed \(dropout\)"):
    sweep_lib.work(sweep, workdir, progress=False)  # was Optuna's ValueError, a traceback
  assert os.listdir(workdir) == ["sweep.json"]  # nothing started


def test_a_sweep_whose_first_run_trained_nothing_may_change_its_base(tmp_path):
  """A first run that stopped before any trial trained (bad data, say) leaves its trials
  marked interrupted and its base in sweep.json: the corrected command runs."""
  workdir = str(tmp_path / "sweep")
  sweep = sweep_lib.load_sweep(SWEEP_TINY, ["numbers_train=3000"])
  for trial in sweep.trials:
    sweep_lib._write_trial_info(trial, os.path.join(workdir, trial.name), "interrupted", 0.0, 1)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump({"keys": sweep.keys, "space": sweep_lib._space_json(sweep.space),
               "metric": sweep.metric, "mode": sweep.mode, "base": sweep.base.to_dict()}, f)
  fixed = sweep_lib.load_sweep(SWEEP_TINY, ["numbers_train=3000", "numbers_max=99999"])
  sweep_lib._check_same_declaration(fixed, workdir)  # no trial began: nothing to keep apart
  changed = r"base config changed .*numbers_max: 999 -> 99999"
  with pytest.raises(UserError, match=changed):  # a worker joins the sweep as it stands
    sweep_lib._check_same_declaration(fixed, workdir, joining=True)
  with open(os.path.join(workdir, sweep.trials[0].name, "config.json"), "w") as f:
    f.write("{}")  # a trial in its first epoch: no checkpoint yet
  with pytest.raises(UserError, match=changed):
    sweep_lib._check_same_declaration(fixed, workdir)


def test_plot_of_a_search_draws_every_trial_it_asked(tmp_path, monkeypatch):
  """A search's sweep.json lists only the trials it enqueued first; the sampler's come
  from the study. `plot` draws every trial workdir, and --out DIR/ names a directory."""
  drawn = {}
  monkeypatch.setattr(tracking, "plot_runs",
                      lambda runs, path, title=None: drawn.update(runs=runs, title=title) or path)
  workdir = tmp_path / "search"
  workdir.mkdir()
  (workdir / "sweep.json").write_text(json.dumps({"trials": ["learning_rate=0.001"]}))
  for name in ("learning_rate=0.001", "learning_rate=0.0123", "learning_rate=0.0042"):
    (workdir / name).mkdir()
    (workdir / name / "trial.json").write_text("{}")
    (workdir / name / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n')
  out = tracking.plot_workdir(str(workdir), str(tmp_path / "plots" / "new") + os.sep)
  assert out == str(tmp_path / "plots" / "new" / "curves.png")
  assert list(drawn["runs"]) == ["learning_rate=0.001", "learning_rate=0.0042",
                                 "learning_rate=0.0123"]
  assert drawn["title"] == "sweep search: 3 trial(s)"


@pytest.mark.filterwarnings("ignore:The value nan is not acceptable")  # no metrics: not trained
def test_a_sweep_whose_base_changed_is_refused_in_its_old_workdir(tmp_path, monkeypatch):
  """Trials finished on one base config are not reported done for another (--set, an
  edited config file): refused before anything is written, naming the changed base keys.
  Settings a run may resume with changed (time budget, cpu_crosscheck) may change, and a
  sweep.json written before it recorded its base still runs."""
  monkeypatch.setattr(tracking, "plot_runs", lambda *args, **kwargs: None)  # not tested here
  workdir = str(tmp_path / "sweep")
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  for trial in sweep.trials:  # finished: running the sweep again trains nothing
    os.makedirs(os.path.join(workdir, trial.name))
    with open(os.path.join(workdir, trial.name, "results.json"), "w") as f:
      f.write("{}")
  sweep_lib.run_sweep(sweep, workdir, progress=False)
  before = file_times(workdir)
  changed = sweep_lib.load_sweep(SWEEP_TINY, ["num_epochs=3", "latent_dim=64",
                                              "time_budget_minutes=5"])
  with pytest.raises(UserError) as refused:
    sweep_lib.run_sweep(changed, workdir, progress=False)
  message = str(refused.value)
  assert (f"(latent_dim: {sweep.base.latent_dim} -> 64; num_epochs: {sweep.base.num_epochs} "
          "-> 3)") in message
  assert "new --workdir" in message and "same settings" in message
  assert file_times(workdir) == before
  sweep_lib.run_sweep(sweep_lib.load_sweep(SWEEP_TINY, ["time_budget_minutes=5",
                                                        "cpu_crosscheck=never"]),
                      workdir, progress=False)
  path = os.path.join(workdir, "sweep.json")
  with open(path) as f:
    older = {k: v for k, v in json.load(f).items() if k != "base"}
  with open(path, "w") as f:
    json.dump(older, f)
  sweep_lib.run_sweep(changed, workdir, progress=False)
  with open(path) as f:
    assert json.load(f)["base"]["latent_dim"] == 64  # recorded from now on


@pytest.mark.filterwarnings("ignore:The value nan is not acceptable")  # no metrics: not trained
def test_trials_a_time_budget_stopped_resume_under_a_larger_budget_or_none(tmp_path, monkeypatch):
  """A trial the budget stopped counts as done under the budget it ran with (the equal-time
  comparison the sweep was) or a smaller one; with a larger budget, or none, the same sweep
  resumes it from its checkpoint, as `train` would. The table shows epochs_reached
  whenever a trial ran under a budget."""
  monkeypatch.setattr(tracking, "plot_runs", lambda *args, **kwargs: None)  # not tested here
  workdir = str(tmp_path / "sweep")
  sweep = sweep_lib.load_sweep(SWEEP_TINY, ["time_budget_minutes=5"])
  stopped, finished = sweep.trials[0].name, [t.name for t in sweep.trials[1:]]
  for trial in sweep.trials:
    os.makedirs(os.path.join(workdir, trial.name, "checkpoints", "7"))
    results = {"step": 7, "val/token_accuracy": 0.5, "time_budget_minutes": 5,
               "stopped_by_time_budget": trial.name == stopped, "epochs_reached": 1.5}
    with open(os.path.join(workdir, trial.name, "results.json"), "w") as f:
      json.dump(results, f)
  trained = []

  def train_trials(configs, dirs, **kwargs):
    trained.extend(os.path.basename(d) for d in dirs)
    return [{"val/token_accuracy": 0.6} for _ in dirs]

  monkeypatch.setattr(sweep_lib.loop, "train_trials", train_trials)
  for budget in ("5", "3"):  # the same budget, or a smaller one: nothing to train
    rows = sweep_lib.run_sweep(sweep_lib.load_sweep(SWEEP_TINY, [f"time_budget_minutes={budget}"]),
                               workdir, progress=False)
    assert trained == [] and len(rows) == 4
  assert (sweep_lib.trial_status(os.path.join(workdir, stopped), 10)
          == sweep_lib.trial_status(os.path.join(workdir, stopped), math.inf) == "started")
  assert sweep_lib.trial_status(os.path.join(workdir, finished[0]), None) == "done"
  rows = sweep_lib.run_sweep(sweep_lib.load_sweep(SWEEP_TINY), workdir, progress=False)  # none
  assert trained == [stopped]
  with open(os.path.join(workdir, "results.csv")) as f:
    assert "epochs_reached" in f.readline()  # the others ran under a budget


def test_a_trial_s_throughput_leaves_out_the_epochs_that_compiled(tmp_path):
  """Each process's first epoch compiles (a resumed trial's too): samples_per_sec is the
  median of the others; a trial of one epoch has only its first."""
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  trial, trial_dir = sweep.trials[0], tmp_path / sweep.trials[0].name
  trial_dir.mkdir()
  (trial_dir / "results.json").write_text("{}")
  epochs = [(10.0, 5), (100.0, 0), (20.0, 2), (110.0, 0), (120.0, 0)]  # resumed at epoch 3
  with open(trial_dir / "metrics.jsonl", "w") as f:
    for i, (rate, compilations) in enumerate(epochs):
      f.write(json.dumps({"step": i + 1, "epoch": i + 1, "train/epoch_seconds": 1.0,
                          "train/samples_per_sec": rate, "train/compilations": compilations,
                          "val/loss": 1.0}) + "\n")
  assert sweep_lib.trial_row(sweep, trial, str(trial_dir))["samples_per_sec"] == 110.0
  with open(trial_dir / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 1, "epoch": 1, "train/epoch_seconds": 1.0,
                        "train/samples_per_sec": 10.0, "train/compilations": 5}) + "\n")
  assert sweep_lib.trial_row(sweep, trial, str(trial_dir))["samples_per_sec"] == 10.0


def test_the_best_epoch_of_an_error_metric_is_its_lowest(tmp_path):
  sweep = dataclasses.replace(sweep_lib.load_sweep(SWEEP_TINY), metric="val/cer", mode="min")
  trial, trial_dir = sweep.trials[0], tmp_path / sweep.trials[0].name
  trial_dir.mkdir()
  (trial_dir / "results.json").write_text("{}")
  with open(trial_dir / "metrics.jsonl", "w") as f:
    for step, cer in ((1, 0.9), (2, 0.1), (3, 0.3)):
      f.write(json.dumps({"step": step, "train/epoch_seconds": 1.0, "val/loss": 1.0,
                          "train/samples_per_sec": 10.0, "val/cer": cer}) + "\n")
  row = sweep_lib.trial_row(sweep, trial, str(trial_dir))
  assert (row["best_val_cer"], row["final_val_cer"]) == (0.1, 0.3)  # was 0.9: the worst


def test_a_sweep_file_whose_get_sweep_raises_is_one_line(tmp_path):
  path = tmp_path / "raises.py"
  path.write_text("from seq2seq_jax.config import Config\n"
                  "def get_config():\n  return Config()\n"
                  "def get_sweep():\n  raise ValueError('boom')\n")
  with pytest.raises(UserError, match=r"^config file '.*raises.py': get_sweep\(\) raised "
                     r"ValueError: boom$"):
    sweep_lib.load_sweep(str(path))


def test_a_mode_max_results_table_puts_the_highest_trial_first():
  """results.csv of a val/exact_match sweep listed its worst trial first."""
  sweep = dataclasses.replace(sweep_lib.load_sweep(SWEEP_TINY), metric="val/exact_match",
                              mode="max")
  rows = [{"trial": name, "status": "done", "best_val_exact_match": value, "best_val_loss": 1.0}
          for name, value in (("low", 0.2), ("high", 0.9), ("mid", 0.5))]
  assert [r["trial"] for r in sweep_lib.sort_rows(sweep, rows)] == ["high", "mid", "low"]


def test_a_finished_trial_s_row_says_complete_as_optuna_does(tmp_path):
  """The results table's state column said "done" for a finished trial, where the
  study's states say "complete"."""
  sweep = sweep_lib.load_sweep(SWEEP_TINY)
  trial, trial_dir = sweep.trials[0], tmp_path / sweep.trials[0].name
  trial_dir.mkdir()
  (trial_dir / "results.json").write_text("{}")
  (trial_dir / "metrics.jsonl").write_text(json.dumps(
      {"step": 1, "train/epoch_seconds": 1.0, "val/loss": 1.0,
       "train/samples_per_sec": 10.0}) + "\n")
  row = sweep_lib.trial_row(sweep, trial, str(trial_dir))
  assert (row["status"], row["state"]) == ("done", "complete")


def test_a_heartbeat_as_long_as_the_grace_period_is_refused():
  """heartbeat_seconds == grace_seconds was accepted: a live worker's trial, its heartbeat
  just due, was taken for dead and run a second time."""
  with pytest.raises(UserError, match=r"heartbeat_seconds \(5\) must be less than "
                     r"grace_seconds \(5\)"):
    sweep_lib.make_sweep(Config(), {"grid": {"learning_rate": [1e-3]}, "heartbeat_seconds": 5,
                                    "grace_seconds": 5})


def test_trials_resumed_from_different_steps_are_not_vectorised_together(tmp_path):
  """Trials whose checkpoints stopped at different steps were put in one vmap group,
  which cannot resume them from one position."""
  sweep = sweep_lib.make_sweep(tiny_config(), {"grid": {"learning_rate": [1e-3, 2e-3, 3e-3]},
                                               "vectorize": True})
  for trial, step in zip(sweep.trials, (10, 20, 10)):
    (tmp_path / trial.name / "checkpoints" / str(step)).mkdir(parents=True)
  pairs = [(None, trial) for trial in sweep.trials]
  groups = sweep_lib._plan(pairs, str(tmp_path), vectorize=True)
  assert [[t.name for _, t in group] for group in groups] == [
      [sweep.trials[0].name, sweep.trials[2].name], [sweep.trials[1].name]]
