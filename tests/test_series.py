"""series:PATH: CSV parsing names bad rows and columns, windows slide over rows, and a trained
model beats the last-value baseline and restores."""

import numpy as np
import pytest

from seq2seq_jax.errors import DataError
from seq2seq_jax.series import load_series, read_csv, series_metrics, windows
from seq2seq_jax.inference import load_trained
from seq2seq_jax.loop import train_and_evaluate
from tests.conftest import ROOT, cli_in_process, run_cli


def series_config(path, **overrides):
  from seq2seq_jax.config import load_config_file
  import dataclasses, os
  config = load_config_file(os.path.join(ROOT, "configs", "series.py"))
  values = dict(data=f"series:{path}", series_input_steps=8, series_output_steps=2,
                latent_dim=32, num_epochs=30, eval_every_epochs=30, checkpoint_every_epochs=15,
                batch_size=16, learning_rate=1e-2,
                log_every_steps=1000)
  values.update(overrides)
  return dataclasses.replace(config, **values)


def write_csv(path, rows=400, header=True):
  t = np.arange(rows)
  with open(path, "w") as f:
    if header:
      f.write("a,b\n")
    for i in t:
      f.write(f"{np.sin(i / 5):.5f},{np.cos(i / 7) * 10:.5f}\n")
  return str(path)


def test_csv_with_and_without_header(tmp_path):
  names, values = read_csv(write_csv(tmp_path / "h.csv", rows=5))
  assert names == ["a", "b"] and values.shape == (5, 2)
  names, values = read_csv(write_csv(tmp_path / "n.csv", rows=5, header=False))
  assert names == ["column_0", "column_1"] and values.shape == (5, 2)


def test_a_target_column_named_twice_is_refused(tmp_path):
  path = write_csv(tmp_path / "s.csv")
  for spec, again in (("b,b", "'b'"), ("a, 0", "'0'")):
    with pytest.raises(DataError, match=f"series_targets: {again} names column '[ab]' .* again"):
      load_series(series_config(path, series_targets=spec), path)


def test_bad_cells_name_row_and_column(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("a,b\n1,2\n3,x\n")
  with pytest.raises(DataError, match=r"bad.csv:3: column 2 \('b'\) is not a number"):
    read_csv(str(path))
  path.write_text("a,b\n1,2\n3\n")
  with pytest.raises(DataError, match=r"bad.csv:3: 1 columns, expected 2"):
    read_csv(str(path))
  path.write_bytes(b"a,b\n1,2\n3\r,4\n5,6\n")  # a stray CR is no line end in a LF file
  with pytest.raises(DataError, match=r"bad.csv:3: a carriage return \(\\r\) inside the line"):
    read_csv(str(path))


def test_too_few_rows_is_a_clear_error(tmp_path):
  path = write_csv(tmp_path / "short.csv", rows=10)
  with pytest.raises(DataError, match="too few for one window"):
    load_series(series_config(path), path)


def test_windows_slide_over_rows():
  values = np.arange(20, dtype=np.float64).reshape(10, 2)
  data = windows(values, [1], n_in=3, n_out=2)
  assert len(data) == 6 and data.src_NxS.shape == (6, 3, 2)
  np.testing.assert_array_equal(data.src_NxS[1], values[1:4])
  np.testing.assert_array_equal(data.tgt_NxT[1, 1:, 0], values[4:6, 1])


def write_ramp(path, rows=100):
  """Column a is the row's index (0, 1, 2, ...): each window says where it was cut."""
  with open(path, "w") as f:
    f.write("a,b\n" + "".join(f"{i},{i % 7}\n" for i in range(rows)))
  return str(path)


def test_the_scaler_is_fitted_on_the_training_rows_only(tmp_path):
  """The held-out rows' mean and spread leaked into the model's inputs: a trending series
  was scaled with statistics of rows the model is then scored on."""
  path = write_ramp(tmp_path / "ramp.csv")  # 80 training rows, 10 validation, 10 test
  scaler = load_series(series_config(path), path).scaler
  np.testing.assert_allclose(scaler.mean_F, [39.5, np.mean(np.arange(80) % 7)])
  np.testing.assert_allclose(scaler.std_F, [np.arange(80).std(), (np.arange(80) % 7).std()])


def test_each_held_out_split_forecasts_every_one_of_its_rows(tmp_path):
  """A held-out split's first window takes its inputs from the rows before the split, so
  every one of its rows is forecast: validation windows started at its own first row,
  and 10 validation rows gave 1 window instead of 9."""
  path = write_ramp(tmp_path / "ramp.csv")
  splits = load_series(series_config(path, series_targets="a"), path)
  for split, first in ((splits.val, 80), (splits.test, 90)):
    targets = splits.scaler.unscale_targets(split.tgt_NxT[:, 1:, 0])
    assert len(split) == 10 - 2 + 1  # n_val - n_out + 1
    np.testing.assert_allclose(targets[:, 0], np.arange(first, first + 9), atol=1e-4)
    np.testing.assert_allclose(splits.scaler.unscale_targets(split.src_NxS[0, :, :1])[:, 0],
                               np.arange(first - 8, first), atol=1e-4)


def test_the_baseline_repeats_the_last_input_value(tmp_path):
  """baseline_mse/mae, what a model has to beat, forecast the last input row: the first
  one made the baseline n_in steps staler and any model look good."""
  path = write_ramp(tmp_path / "ramp.csv")
  splits = load_series(series_config(path, series_targets="a"), path)
  metrics = series_metrics(splits.val.tgt_NxT[:, 1:], splits.val, splits.scaler)
  # the ramp's next two rows are 1 and 2 past the last input row
  assert metrics["mse"] == pytest.approx(0.0, abs=1e-8)
  assert metrics["baseline_mae"] == pytest.approx(1.5, rel=1e-5)
  assert metrics["baseline_mse"] == pytest.approx(2.5, rel=1e-5)


@pytest.mark.slow
def test_train_beats_last_value_baseline_and_restores(tmp_path, capsys):
  path = write_csv(tmp_path / "s.csv")
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(series_config(path, series_targets="b"), workdir, progress=False)
  assert summary["test/mse"] < summary["test/baseline_mse"]
  task, params, _ = load_trained(workdir)
  assert task.scaler.targets == [1] and task.scaler.columns == ["a", "b"]
  from seq2seq_jax.errors import UserError
  with pytest.raises(UserError, match="use Translator.forecast"):  # was a deep JAX TypeError
    task.translate(params, ["1,2"])
  result = run_cli("evaluate", "--workdir", workdir, "--json")
  assert result.returncode == 0, result.stderr
  import json
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics["mse"] == pytest.approx(summary["test/mse"], rel=1e-5)
  refused = run_cli("translate", "--workdir", workdir, "1,2")
  assert refused.returncode == 2 and "series model" in refused.stderr
  hyps = tmp_path / "hyps.txt"  # evaluate's flags for text outputs: refused, not ignored
  for flags in (["--beam", "3"], ["--split", "all"], ["--hyps", str(hyps)]):
    code, out, err = cli_in_process(capsys, "evaluate", "--workdir", workdir, *flags)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"{flags[0]}" in err and "for text models" in err
  assert not hyps.exists()
  # plot draws a series run's errors beside the baseline's, not text metrics it lacks
  from seq2seq_jax import tracking
  assert tracking.panels_for({"run": tracking.curves(tracking.read_metrics(workdir))}) \
      == tracking.SERIES_PANELS
  code, out, _ = cli_in_process(capsys, "plot", "--workdir", workdir)
  assert code == 0 and out.strip().endswith("curves.png")
