import json
import os

import pytest

from seq2seq_jax.inference import load_trained
from tests.conftest import run_cli


@pytest.mark.slow
def test_translate_in_a_fresh_process_matches_in_process(trained_workdir):
  task, params, _ = load_trained(trained_workdir)
  sources = ["twelve", "three hundred and forty-five", "", "nine hundred and ninety-nine"]
  expected = task.translate(params, sources)
  expected[2] = ""
  result = run_cli("translate", "--workdir", trained_workdir, input_text="\n".join(sources) + "\n")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split("\n")[:-1] == expected  # one line per input line
  args = run_cli("translate", "--workdir", trained_workdir, "--batch-size", "1", *sources[:2])
  assert args.stdout.splitlines() == expected[:2]


@pytest.mark.slow
def test_unknown_characters_warn_once(trained_workdir):
  result = run_cli("translate", "--workdir", trained_workdir, "twelve!", "z?")
  assert result.returncode == 0
  assert len(result.stdout.splitlines()) == 2
  assert "never seen in training" in result.stdout + result.stderr
  assert "'!'" in result.stdout + result.stderr


@pytest.mark.slow
def test_evaluate_json_keys(trained_workdir):
  result = run_cli("evaluate", "--workdir", trained_workdir, "--json")
  assert result.returncode == 0, result.stderr
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(metrics) == {"loss", "token_accuracy", "exact_match", "cer", "chrf", "bleu"}
  results = json.load(open(os.path.join(trained_workdir, "results.json")))
  assert abs(results["test/loss"] - metrics["loss"]) < 1e-5  # same checkpoint, same split


def test_clear_errors_without_traceback(tmp_path):
  missing = run_cli("translate", "--workdir", str(tmp_path / "nowhere"), "one")
  assert missing.returncode == 2 and "does not exist" in missing.stderr
  assert "Traceback" not in missing.stderr
  bad_key = run_cli("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "x"),
                    "--set", "hidden=3")
  assert bad_key.returncode == 2 and "unknown config key 'hidden'" in bad_key.stderr
  empty = tmp_path / "empty"
  empty.mkdir()
  no_ckpt = run_cli("translate", "--workdir", str(empty), "one")
  assert no_ckpt.returncode == 2 and "no checkpoint" in no_ckpt.stderr


def test_help_for_every_subcommand():
  for command in ("train", "translate", "evaluate"):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "usage: seq2seq-jax" in result.stdout


def test_sigterm_outside_the_training_loop_is_a_clear_interrupt(monkeypatch, capsys, tmp_path):
  """SIGTERM while a command loads data or compiles: a message and exit 130 (as Ctrl-C),
  not a silent death; the caller's handler is back afterwards."""
  import signal
  import time

  from seq2seq_jax import cli
  from tests.conftest import cli_in_process

  def loading(args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the signal ends this long before
    return 0

  monkeypatch.setattr(cli, "cmd_train", loading)
  before = signal.getsignal(signal.SIGTERM)
  code, _, err = cli_in_process(capsys, "train", "--workdir", str(tmp_path / "run"))
  assert code == 130
  assert "interrupted by SIGTERM" in err and "run the same command again" in err
  assert "Traceback" not in err
  assert signal.getsignal(signal.SIGTERM) is before
