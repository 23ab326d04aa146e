"""The `seq2seq-jax` commands as a user runs them: translate, evaluate and plot outputs, one-line
errors without tracebacks, Ctrl-C and SIGTERM, standard input, and the library's equivalents."""

import json
import os
import shutil
import types

import pytest

from seq2seq_jax.errors import UserError
from seq2seq_jax.inference import load_trained
from seq2seq_jax.metrics import text_metrics
from tests.conftest import ROOT, cli_in_process, event_scalars, run_cli, tiny_config, write_tsv


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
  # a batch far larger than the inputs: the rows they need, not 10**12 of them (2 TiB)
  assert task.translate(params, sources[:1], batch_size=10**12) == expected[:1]


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
  assert set(metrics) == {"loss", "token_accuracy", "exact_match", "cer", "chrf", "bleu",
                          "pairs", "checkpoint", "split", "data", "decoder", "signatures"}
  # what was scored, beside the scores
  assert metrics["split"] == "test" and metrics["decoder"] == {"strategy": "greedy"}
  assert metrics["data"] == load_trained(trained_workdir)[0].config.data
  assert metrics["checkpoint"] == load_trained(trained_workdir)[2]
  results = json.load(open(os.path.join(trained_workdir, "results.json")))
  assert abs(results["test/loss"] - metrics["loss"]) < 1e-5  # same checkpoint, same split


def _number_pairs(numbers):
  from num2words import num2words
  return [(num2words(n, lang="en"), num2words(n, lang="fr")) for n in numbers]


def _evaluate_all(capsys, workdir, tmp_path):
  """`evaluate --split all --json --hyps` on a 20-line tsv of lengths in mixed order, 2
  of its sources longer than the tiny model's max_source_len=40: (pairs, JSON, stderr,
  output lines)."""
  numbers = [987_654, 3, 451, 78, 200, 999, 12, 640, 5, 333] * 2
  pairs = _number_pairs(numbers)
  assert sum(len(s) > 40 for s, _ in pairs) == 2
  data = write_tsv(tmp_path / "test.tsv", pairs)
  hyps = tmp_path / "hyps.txt"
  code, out, err = cli_in_process(capsys, "evaluate", "--workdir", workdir, "--data",
                                  f"tsv:{data}", "--split", "all", "--json", "--hyps", str(hyps))
  assert code == 0, err
  lines = hyps.read_text(encoding="utf-8").split("\n")
  assert lines[-1] == ""  # every output ends its line
  return pairs, json.loads(out), err, lines[:-1]


def test_evaluate_split_all_scores_every_line_of_a_file(trained_workdir, tmp_path, capsys):
  """--split all: every line of an external file, a source longer than max_source_len
  included (cut, counted in one warning); --hyps: one output per line; the metrics are
  those of all the outputs; --json carries sacrebleu's signatures."""
  pairs, result, err, outputs = _evaluate_all(capsys, trained_workdir, tmp_path)
  assert result["pairs"] == len(outputs) == len(pairs) == 20
  warnings = [line for line in err.splitlines() if "longer than" in line]
  assert len(warnings) == 1 and warnings[0].startswith("warning: 2 of 20 pairs")
  scores = text_metrics(outputs, [t for _, t in pairs])  # over all 20, not a decoded subset
  assert {k: result[k] for k in scores} == scores
  for name in ("bleu", "chrf"):
    assert "nrefs:1|" in result["signatures"][name] and "|version:" in result["signatures"][name]
  assert "tok:13a" in result["signatures"]["bleu"]
  assert "training pairs included" not in err  # an external file: no such warning
  code, _, err = cli_in_process(capsys, "evaluate", "--workdir", trained_workdir, "--split", "all")
  assert code == 0 and "warning: --split all without --data scores every pair of the run's own " \
      "data (numbers:fr), its training pairs included" in err


def test_evaluate_warns_of_unseen_characters_as_translate_does(trained_workdir, tmp_path, capsys):
  """A test file whose accents are written apart (NFD) scored near 0 without a word."""
  data = write_tsv(tmp_path / "nfd.tsv", [("twelve", "douze"), ("twe\u0301lve", "douze")])
  code, _, err = cli_in_process(capsys, "evaluate", "--workdir", trained_workdir, "--data",
                                f"tsv:{data}", "--split", "all")
  assert code == 0 and ("warning: characters never seen in training (read as unknown): "
                        "'\\u0301' (accents written apart from their letters: is the text NFD? "
                        "Normalise it to NFC, as docs/data.md says)") in err


@pytest.mark.slow
def test_evaluate_hyps_are_translates_outputs_in_input_order(trained_workdir, tmp_path, capsys):
  """Evaluate decodes in length-sorted order; --hyps is in the file's order all
  the same, line for line what translate gives for the same sources."""
  pairs, _, _, outputs = _evaluate_all(capsys, trained_workdir, tmp_path)
  code, translated, _ = cli_in_process(capsys, "translate", "--workdir", trained_workdir,
                                       *[s for s, _ in pairs])
  assert code == 0 and outputs == translated.splitlines()


def test_evaluate_prints_the_signatures_and_refuses_a_hyps_file_nowhere(
    trained_workdir, tmp_path, capsys):
  code, out, _ = cli_in_process(capsys, "evaluate", "--workdir", trained_workdir)
  assert code == 0
  [line] = [line for line in out.splitlines() if "signatures" in line]
  assert "BLEU|nrefs:1|" in line and "chrF2|nrefs:1|" in line
  for bad in (tmp_path / "nowhere" / "hyps.txt", tmp_path):
    code, out, err = cli_in_process(capsys, "evaluate", "--workdir", trained_workdir,
                                    "--hyps", str(bad))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--hyps" in err and "Traceback" not in err
  assert os.listdir(tmp_path) == []


def test_evaluate_hyps_never_writes_over_what_it_reads(trained_workdir, tmp_path, capsys):
  """--hyps naming the scored data file, or one of the run's own files (its config, a
  checkpoint), is refused in one line before decoding, and the file is left as it was;
  so is `-` (standard output carries the report). A new file in the workdir is fine."""
  data = write_tsv(tmp_path / "test.tsv", [("one", "un"), ("two", "deux")])
  before = open(data, "rb").read()
  config = os.path.join(trained_workdir, "config.json")
  config_before = open(config, "rb").read()
  step = sorted(os.listdir(os.path.join(trained_workdir, "checkpoints")))[0]
  saved = os.path.join(trained_workdir, "checkpoints", step, "seq2seq_jax_files.json")
  saved_before = open(saved, "rb").read()
  new_step = os.path.join(trained_workdir, "checkpoints", "999")  # not written in either
  for hyps in (data, config, saved, new_step, "-"):
    code, out, err = cli_in_process(capsys, "evaluate", "--workdir", trained_workdir, "--data",
                                    f"tsv:{data}", "--split", "all", "--hyps", hyps)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"--hyps {hyps}" in err and ("would replace" in err) == (hyps not in ("-", new_step))
    assert ("would write in the run's own files" in err) == (hyps == new_step), err
  assert open(data, "rb").read() == before and open(config, "rb").read() == config_before
  assert open(saved, "rb").read() == saved_before and not os.path.exists(new_step)
  new = os.path.join(trained_workdir, "hyps.txt")
  try:
    code, _, err = cli_in_process(capsys, "evaluate", "--workdir", trained_workdir, "--data",
                                  f"tsv:{data}", "--split", "all", "--hyps", new)
    assert code == 0 and len(open(new).read().splitlines()) == 2, err
  finally:
    if os.path.exists(new):
      os.remove(new)


def test_plot_writes_where_it_says_and_refuses_in_one_line(trained_workdir, tmp_path, capsys):
  """--out: a file (PNG without an extension), or a directory to hold curves.png; the path
  printed is the file written. A format matplotlib cannot write, a file given as workdir or
  a metrics.jsonl with no record: one line each."""
  folder = tmp_path / "figures"
  folder.mkdir()
  for out, written in ((folder, folder / "curves.png"), (tmp_path / "curves", tmp_path / "curves.png"),
                       (tmp_path / "new" / "c.png", tmp_path / "new" / "c.png"),  # folders made
                       (f"{tmp_path / 'newer'}{os.sep}", tmp_path / "newer" / "curves.png")):
    code, printed, err = cli_in_process(capsys, "plot", "--workdir", trained_workdir, "--out", str(out))
    assert code == 0 and printed.strip() == str(written) and written.is_file(), err
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "metrics.jsonl").write_text("")
  checkpoints = os.path.join(trained_workdir, "checkpoints")
  step = os.path.join(checkpoints, sorted(os.listdir(checkpoints))[0])
  for argv, says in ((["--out", str(tmp_path / "c.txt")], "matplotlib writes no .txt files"),
                     (["--workdir", str(written)], "is a file, not a directory"),
                     (["--workdir", str(empty)], "metrics.jsonl in '" + str(empty) + "' holds no readable record"),
                     # a run's checkpoints, as a workdir or a place to write (was "train
                     # first", and a curves.png among a checkpoint's files)
                     (["--workdir", checkpoints], f"is part of the checkpoints of the run in "
                                                  f"'{trained_workdir}', not a run"),
                     (["--out", step + os.sep], f"would write in the run's own files ({checkpoints})"),
                     (["--out", os.path.join(trained_workdir, "config.json")],
                      "would replace the run's own files")):
    workdir = [] if "--workdir" in argv else ["--workdir", trained_workdir]
    code, _, err = cli_in_process(capsys, "plot", *workdir, *argv)
    assert code == 2 and err.count("\n") == 1 and says in err, err


def test_training_loss_is_drawn_per_epoch_where_fewer_steps_were_logged():
  from seq2seq_jax.tracking import curves
  epochs = [{"step": 29 * e, "epoch": e, "train/loss": 1.0 / e, "train/epoch_seconds": 1.0}
            for e in range(1, 41)]
  one_step = [{"step": 1000, "epoch": 35, "train/loss": 0.03, "lr": 0.01}]
  assert curves(epochs + one_step)["train/loss"][0] == [29 * e for e in range(1, 41)]
  steps = [{"step": s, "epoch": 1, "train/loss": 1.0, "lr": 0.01} for s in range(1, 60)]
  assert curves(epochs + steps)["train/loss"][0] == list(range(1, 60))


def test_clear_errors_without_traceback(tmp_path):
  missing = run_cli("translate", "--workdir", str(tmp_path / "nowhere"), "one")
  assert missing.returncode == 2 and "does not exist" in missing.stderr
  assert "Traceback" not in missing.stderr
  (tmp_path / "notes.txt").write_text("not a workdir")
  a_file = run_cli("translate", "--workdir", str(tmp_path / "notes.txt"), "one")
  assert a_file.returncode == 2 and "is a file, not a directory" in a_file.stderr
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


def test_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
  """A Ctrl-C while the command's modules import or its arguments are read (its first
  tenth of a second) printed the import's traceback."""
  import builtins
  from seq2seq_jax import __main__ as entry, cli
  real_import = builtins.__import__

  def interrupted_import(name, *args, **kwargs):
    if name == "seq2seq_jax.cli":
      raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", interrupted_import)
  assert entry.run() == 130
  monkeypatch.setattr(builtins, "__import__", real_import)
  assert capsys.readouterr().err == "seq2seq-jax: interrupted by SIGINT while starting; nothing was done.\n"

  def interrupted_parse(argv):
    raise KeyboardInterrupt

  monkeypatch.setattr(cli, "_parse", interrupted_parse)
  assert cli.main(["translate", "--workdir", "w", "one"]) == 130
  assert capsys.readouterr().err == "seq2seq-jax: interrupted by SIGINT while starting; nothing was done.\n"


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


@pytest.mark.parametrize("argv, message", [
    (["translate", "--workdir", "w", "--sample", "--seed", "99999999999999999999", "x"],
     "argument --seed: must be a whole number from 0 to 9223372036854775807 (2**63 - 1), "
     "got '99999999999999999999'"),
    (["translate", "--workdir", "w", "--sample", "--seed", "-1", "x"],  # the same range
     "argument --seed: must be a whole number from 0 to 9223372036854775807 (2**63 - 1), "
     "got '-1'"),
    (["translate", "--workdir", "w", "--beam", "5", "--length-penalty", "nan"],
     "argument --length-penalty: must be a finite number, got 'nan'"),
    (["translate", "--workdir", "w", "--sample", "--temperature", "inf"],
     "argument --temperature: must be a finite number, got 'inf'"),
    (["translate", "--workdir", "w", "--sample", "--temperature", "-0.5"],
     "argument --temperature: the temperature must be 0 (greedy) or from 1.2e-38 to 3.4e+38 "
     "(float32's normal numbers), got -0.5"),
    # finite here, but 0 (a subnormal), inf or an overflowing penalty in float32
    (["translate", "--workdir", "w", "--sample", "--temperature", "1e-40"],
     "argument --temperature: the temperature must be 0 (greedy) or from 1.2e-38 to 3.4e+38 "
     "(float32's normal numbers), got 1e-40"),
    (["translate", "--workdir", "w", "--beam", "2", "--length-penalty", "1e300"],
     "argument --length-penalty: the length penalty must be from -10 to 10 (GNMT's alpha, "
     "usually 0.6 to 1; beyond that float32 overflows on long outputs), got 1e+300"),
    (["evaluate", "--workdir", "w", "--beam", "2", "--length-penalty", "inf"],
     "argument --length-penalty: must be a finite number, got 'inf'"),
    (["export", "--workdir", "w", "--out", "o", "--length-penalty", "nan"],
     "argument --length-penalty: must be a finite number, got 'nan'"),
    (["serve", "--workdir", "w", "--length-penalty=-inf"],
     "argument --length-penalty: must be a finite number, got '-inf'"),
])
def test_numbers_a_decoder_cannot_use_are_refused_in_one_line(argv, message, capsys):
  """Refused by the parser before a model loads: a seed JAX cannot take (it was a
  traceback), a nan or inf (garbage output, or exact match 0)."""
  from seq2seq_jax.cli import build_parser
  with pytest.raises(SystemExit) as exit_:
    build_parser().parse_args(argv)
  assert exit_.value.code == 2
  assert capsys.readouterr().err.splitlines() == [  # one line, the usage left to --help
      f"seq2seq-jax {argv[0]}: error: {message} (see seq2seq-jax {argv[0]} --help)"]


def test_an_empty_path_is_refused_in_one_line(capsys):
  """`--workdir "$RUN"` with RUN unset: no path, refused before anything is read or made."""
  from seq2seq_jax.cli import build_parser
  for argv in (["train", "--workdir", ""], ["export", "--workdir", "w", "--out", " "],
               ["train", "--config", ""],  # it ran the default config (minutes)
               ["data", "download", "libreoffice:fr", "--dir", ""],
               ["evaluate", "--workdir", "w", "--hyps", ""], ["benchmark", "--output", ""]):
    with pytest.raises(SystemExit):
      build_parser().parse_args(argv)
    command = " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    assert capsys.readouterr().err.splitlines() == [
        f"seq2seq-jax {command}: error: argument {argv[-2]}: must name a path, got an empty "
        f"one (see seq2seq-jax {command} --help)"]


def test_an_unknown_option_is_named_with_its_command_and_sentences_may_follow_options(
    capsys, trained_workdir):
  """argparse names the top-level program for arguments no subcommand takes: the error
  names the command whose --help tells what it takes; translate's sentences may come on
  both sides of its options, and one starting with '-' goes after --."""
  for argv, command, unknown in (
      (["train", "--bogus"], "train", "--bogus"),
      (["data", "download", "numbers:fr", "--bogus"], "data download", "--bogus"),
      (["translate", "--workdir", "w", "one", "--set", "a=b"], "translate", "--set a=b"),
      (["translate", "--workdir", "w", "one", "-two"], "translate",
       "-two; a sentence that starts with '-' goes after --"),
      (["--bogus", "train"], "", "--bogus")):  # the program's own options
    with pytest.raises(SystemExit) as exit_:
      cli_in_process(capsys, *argv)
    out, err = capsys.readouterr()
    program = f"seq2seq-jax {command}".strip()
    assert exit_.value.code == 2 and out == "" and err.splitlines() == [
        f"{program}: error: unrecognized arguments: {unknown} (see {program} --help)"]
  code, out, _ = cli_in_process(capsys, "translate", "--workdir", trained_workdir, "one",
                                "--beam", "2", "two", "three")
  code_all, out_all, _ = cli_in_process(capsys, "translate", "--workdir", trained_workdir,
                                        "--beam", "2", "one", "two", "three")
  code_dashed, out_dashed, _ = cli_in_process(capsys, "translate", "--workdir", trained_workdir,
                                              "one", "--beam", "2", "--", "two", "three")
  assert code == code_all == code_dashed == 0 and out == out_all == out_dashed
  assert len(out.splitlines()) == 3


def test_the_library_translates_as_the_command_does(trained_workdir):
  """Translator.translate from Python: an empty text gives an empty translation (as
  translate's empty line and the export do; the model's output for nothing before), and a
  caller's mistake is named."""
  translator, params, _ = load_trained(trained_workdir)
  assert translator.translate(params, ["", "twelve", "  \u3000"]) == [
      "", *translator.translate(params, ["twelve"]), ""]  # spaces alone: as an empty line
  with pytest.raises(TypeError, match="pass \\[text\\]"):
    translator.translate(params, "twelve")
  with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1"):
    translator.translate(params, ["twelve"], batch_size=-1)
  from seq2seq_jax.inference import evaluate_pairs
  with pytest.raises(UserError, match="no pairs to evaluate"):  # it scored nothing as 0.0
    evaluate_pairs(translator, params, [])
  with pytest.raises(ValueError, match="decode_limit must be a whole number"):
    evaluate_pairs(translator, params, [("one", "un")], decode_limit=-1)


def test_data_given_twice_is_refused(tmp_path, capsys):
  """--data and --set data=... both: which one wins would be a guess (--data did, silently)."""
  code, out, err = cli_in_process(capsys, "train", "--config", "tiny", "--data", "numbers:de",
                                  "--set", "data=numbers:es", "--workdir", str(tmp_path / "r"))
  assert code == 2 and out == "" and err.splitlines() == [
      "seq2seq-jax train: error: --data numbers:de and --set data=numbers:es both name the "
      "data: give one."]
  assert not (tmp_path / "r").exists()


def test_evaluate_refuses_sampling_in_one_line(capsys):
  """Sampling is translate's: a score of drawn outputs would change with the seed."""
  for options in (["--sample"], ["--sample", "--temperature", "0.5", "--seed", "3"]):
    code, out, err = cli_in_process(capsys, "evaluate", "--workdir", "w", *options)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"seq2seq-jax evaluate: error: {', '.join(o for o in options if o.startswith('--'))} "
        f"{'is' if len(options) == 1 else 'are'} translate's: evaluate scores greedy or "
        "--beam N outputs (a score of drawn outputs would change with the seed)."]


def test_translate_dash_reads_standard_input(monkeypatch):
  """`translate -` reads stdin, as `translate` alone does (sacrebleu's and Unix's `-`)."""
  import io

  from seq2seq_jax.cli import _read_inputs
  monkeypatch.setattr("sys.stdin", io.StringIO("twelve\nthree\n"))
  assert _read_inputs(["-"]) == ["twelve", "three"]
  # among sentences it would be ambiguous (stdin's lines there? a sentence "-"?): refused
  with pytest.raises(UserError, match="'-' reads the sentences from standard input: give it alone"):
    _read_inputs(["twelve", "-"])



@pytest.mark.parametrize("raw, lines", [
    (b"\xef\xbb\xbftwelve\r\nthree\r\n", ["twelve", "three"]),   # BOM, CRLF
    (b"twelve\rthree\r", ["twelve", "three"]),                   # old Mac line ends
    (b"le chat\rder Hund\nchat noir\n", ["le chat\rder Hund", "chat noir"]),  # a stray CR
])
def test_standard_input_gives_one_sentence_per_line(monkeypatch, raw, lines):
  """A CR inside a line of an LF text is no line end: it made two outputs of one line,
  and `paste` of inputs and outputs went out of step."""
  import io
  from seq2seq_jax.cli import _read_inputs
  monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw)))
  assert _read_inputs([]) == lines


def test_a_perfect_corpus_scores_100_not_more():
  """sacrebleu's BLEU of a perfect corpus can exceed 100 by a rounding error."""
  outputs = ["le chat est sur le tapis rouge ."] * 7 + ["bonjour"]
  assert text_metrics(outputs, outputs) == {"exact_match": 1.0, "cer": 0.0, "chrf": 100.0,
                                            "bleu": 100.0}


def test_the_largest_seeds_are_accepted():
  import jax

  from seq2seq_jax.cli import build_parser
  for seed in (2**63 - 1, 0):
    args = build_parser().parse_args(["translate", "--workdir", "w", "--sample", "--seed",
                                      str(seed), "x"])
    assert args.seed == seed
    jax.random.key(seed)


def test_a_config_file_that_raises_is_one_line_error(tmp_path, capsys):
  path = tmp_path / "raises.py"
  path.write_text("def get_config():\n  raise ValueError('boom')\n")
  code, out, err = cli_in_process(capsys, "train", "--config", str(path), "--workdir",
                                  str(tmp_path / "run"))
  assert code == 2 and out == ""
  assert err == f"seq2seq-jax train: error: config file '{path}': get_config() raised ValueError: boom\n"
  assert not (tmp_path / "run").exists()


def test_tensorboard_without_tensorboardx_writes_nothing(tmp_path, capsys, monkeypatch):
  """plot --tensorboard and sweep --tensorboard check for tensorboardX first: no
  curves.png, no empty tensorboard/, no trial trained whose events could not be written."""
  monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # import fails
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0, "epoch": 1}\n')
  code, out, err = cli_in_process(capsys, "plot", "--workdir", str(run), "--tensorboard")
  assert code == 2 and out == "" and len(err.splitlines()) == 1
  assert "--tensorboard needs tensorboardX" in err and "pip install" in err
  assert os.listdir(run) == ["metrics.jsonl"]
  code, _, err = cli_in_process(capsys, "sweep", "--config", "sweep_tiny", "--workdir",
                                str(tmp_path / "sweep"), "--tensorboard")
  assert code == 2 and "--tensorboard needs tensorboardX" in err
  assert os.listdir(tmp_path) == ["run"]


# a run stopped by its time budget: flags (true/false) beside its numbers
BUDGET_RUN_RECORDS = [
    {"step": 4, "epoch": 1, "lr": 0.25, "train/loss": 2.5},
    {"step": 8, "epoch": 1, "train/loss": 2.0, "val/loss": 1.75},
    {"step": 8, "epoch": 1, "time_budget_stop": True},
    {"step": 8, "final": True, "test/loss": 1.5, "time_budget_minutes": 1.0,
     "stopped_by_time_budget": True},
]


def _budget_run(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BUDGET_RUN_RECORDS))
  return str(run)


def test_plot_tensorboard_again_replaces_the_export_before(tmp_path):
  """A second `plot --tensorboard` (after the run trained on) added its events file beside
  the first one: TensorBoard drew every curve twice, the old points over the new."""
  pytest.importorskip("tensorboardX")
  from seq2seq_jax import tracking
  run = _budget_run(tmp_path)
  (logdir,) = tracking.export_tensorboard(run)
  events = lambda: [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents.")]
  (first,) = events()  # named as an export of an earlier second (its name is that second)
  os.rename(os.path.join(logdir, first),
            os.path.join(logdir, "events.out.tfevents.1700000000.host"))
  with open(os.path.join(run, "metrics.jsonl"), "a") as f:  # the run trained on
    f.write(json.dumps({"step": 12, "epoch": 2, "train/loss": 1.25}) + "\n")
  assert tracking.export_tensorboard(run) == [logdir]
  assert len(events()) == 1
  assert event_scalars(logdir)["train/loss"] == [(8, 2.0), (12, 1.25)]


def test_plot_tensorboard_exports_numbers_not_flags(tmp_path):
  """true/false fields of metrics.jsonl (time_budget_stop, stopped_by_time_budget) were
  exported as curves of 1.0 beside the losses."""
  pytest.importorskip("tensorboardX")
  from seq2seq_jax import tracking
  (logdir,) = tracking.export_tensorboard(_budget_run(tmp_path))
  assert event_scalars(logdir) == {
      "step/lr": [(4, 0.25)], "step/train/loss": [(4, 2.5)], "train/loss": [(8, 2.0)],
      "val/loss": [(8, 1.75)], "final/test/loss": [(8, 1.5)],
      "final/time_budget_minutes": [(8, 1.0)]}



def test_curves_draw_each_validation_metric_per_epoch_and_a_series_baseline_beside_it():
  """Every evaluated epoch's validation metrics, the last-value forecast's errors of a series
  model too; the final summary is no point of a curve. Where as many steps as epochs were
  logged, the training loss is the steps'."""
  from seq2seq_jax.tracking import curves
  epochs = [{"step": 10 * e, "epoch": e, "train/loss": 1.0 / e, "train/epoch_seconds": 1.0,
             "val/loss": 2.0 / e, "val/token_accuracy": 0.1 * e, "val/exact_match": 0.05 * e,
             "val/mse": 3.0 / e, "val/baseline_mse": 4.0} for e in (1, 2)]
  final = {"step": 20, "final": True, "val/loss": 0.5, "test/loss": 0.5}
  steps = [{"step": s, "epoch": 1, "train/loss": 3.0 / s, "lr": 0.01} for s in (5, 15)]
  drawn = curves(epochs + steps[:1] + [final] + steps[1:])
  assert drawn == {"train/loss": ([5, 15], [0.6, 0.2]), "val/loss": ([10, 20], [2.0, 1.0]),
                   "val/token_accuracy": ([10, 20], [0.1, 0.2]),
                   "val/exact_match": ([10, 20], [0.05, 0.1]), "val/mse": ([10, 20], [3.0, 1.5]),
                   "val/baseline_mse": ([10, 20], [4.0, 4.0])}


def test_a_series_run_is_drawn_with_its_errors_and_a_text_run_with_its_accuracies():
  """Runs of both kinds in one figure (a sweep of either): the text panels."""
  from seq2seq_jax.tracking import PANELS, SERIES_PANELS, panels_for
  series = {"train/loss": ([1], [1.0]), "val/loss": ([1], [1.0]), "val/mse": ([1], [1.0])}
  text = {"train/loss": ([1], [1.0]), "val/loss": ([1], [1.0]), "val/exact_match": ([1], [0.5])}
  assert panels_for({"a": series}) == SERIES_PANELS
  assert panels_for({"a": text}) == panels_for({"a": series, "b": text}) == PANELS
  assert panels_for({}) == PANELS


def test_the_curves_figure_has_a_panel_per_metric_and_a_legend_for_a_sweep(tmp_path, monkeypatch):
  """Losses on a log scale where every value is positive (else linear), accuracies linear,
  exact match from 0 to 1, points marked on short curves; two runs or more: a line each,
  named in a legend below, for which the figure grows; one run: no legend."""
  from matplotlib.figure import Figure
  from seq2seq_jax.tracking import plot_runs
  saved, savefig = [], Figure.savefig
  monkeypatch.setattr(Figure, "savefig", lambda figure, *a, **k: (saved.append(figure),
                                                                    savefig(figure, *a, **k)))
  records = lambda loss: [{"step": 10 * e, "epoch": e, "train/loss": loss / e,
                           "train/epoch_seconds": 1.0, "val/loss": 0.0 if e == 2 else 1.0,
                           "val/token_accuracy": 0.3 * e, "val/exact_match": 0.2 * e}
                          for e in (1, 2)]
  path = plot_runs({"lr=0.1": records(2.0), "lr=0.01": records(1.0)}, str(tmp_path / "a.png"))
  assert path == str(tmp_path / "a.png") and os.path.getsize(path) > 0
  plot_runs({"run": records(2.0)}, str(tmp_path / "b.png"))
  sweep, run = saved
  axes = {ax.get_title(): ax for ax in sweep.axes}
  assert list(axes) == ["training loss", "validation loss", "validation token accuracy",
                        "validation exact match"]
  assert [axes[t].get_yscale() for t in axes] == ["log", "linear", "linear", "linear"]
  assert axes["validation exact match"].get_ylim() == (-0.02, 1.02)
  assert all(line.get_marker() == "o" for ax in sweep.axes for line in ax.get_lines())
  assert [len(ax.get_lines()) for ax in sweep.axes] == [2, 2, 2, 2]
  [legend] = sweep.legends
  assert [text.get_text() for text in legend.get_texts()] == ["lr=0.1", "lr=0.01"]
  assert not run.legends and run.get_figheight() < sweep.get_figheight()


def test_plot_of_a_workdir_that_does_not_exist_says_so(tmp_path, capsys):
  code, _, err = cli_in_process(capsys, "plot", "--workdir", str(tmp_path / "missing"))
  assert code == 2 and err.count("\n") == 1
  assert f"'{tmp_path / 'missing'}' does not exist: give a run's or a sweep's workdir." in err


def test_tensorboard_while_training_shows_each_record_within_seconds(tmp_path):
  """A live TensorBoard saw a run's records up to two minutes late (tensorboardX wrote them
  every 120 s whatever flush() was called), and a killed run lost them: they are on disk
  within tracking.FLUSH_SECONDS, the writer still open."""
  pytest.importorskip("tensorboardX")
  import time
  from seq2seq_jax.tracking import FLUSH_SECONDS, LiveWriter
  writer = LiveWriter(str(tmp_path))
  want = {"step/train/loss": [(4, 2.5), (8, 2.0)], "step/lr": [(4, 0.25), (8, 0.125)]}
  try:
    writer.record({"step": 4, "epoch": 1, "train/loss": 2.5, "lr": 0.25})
    writer.record({"step": 8, "epoch": 1, "train/loss": 2.0, "lr": 0.125})
    deadline = time.monotonic() + 15 * FLUSH_SECONDS  # a wide margin for a busy machine
    while event_scalars(writer.logdir) != want and time.monotonic() < deadline:
      time.sleep(0.1)
    assert event_scalars(writer.logdir) == want
  finally:
    writer.close()
  assert FLUSH_SECONDS <= 5


def test_tensorboard_while_training_records_the_run_s_settings_beside_its_final_metrics(
    tmp_path):
  """tensorboard=true: the records under the tags `plot --tensorboard` gives them; the HParams
  view takes the settings that are numbers, strings or flags and the metrics that are numbers."""
  pytest.importorskip("tensorboardX")
  from seq2seq_jax.tracking import LiveWriter
  writer = LiveWriter(str(tmp_path))
  try:
    writer.record({"step": 4, "epoch": 1, "train/loss": 2.5, "lr": 0.25})
    writer.hparams({"learning_rate": 0.01, "attention": "general", "tensorboard": True,
                    "data_files": ["a.tsv"], "keras_import": None},
                   {"val/loss": 1.5, "stopped_by_time_budget": True})
  finally:
    writer.close()
  assert event_scalars(writer.logdir) == {"step/train/loss": [(4, 2.5)], "step/lr": [(4, 0.25)]}
  metrics = event_scalars(os.path.join(writer.logdir, "hparams"))
  assert {tag: v for tag, v in metrics.items() if tag.startswith("hparam/")} == {
      "hparam/val/loss": [(0, 1.5)]}
  import struct
  from tensorboardX.proto import event_pb2
  from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
  columns = []
  for name in os.listdir(os.path.join(writer.logdir, "hparams")):
    with open(os.path.join(writer.logdir, "hparams", name), "rb") as f:
      while header := f.read(12):
        event = event_pb2.Event.FromString(f.read(struct.unpack("<Q", header[:8])[0]))
        f.read(4)
        for value in event.summary.value:
          if value.tag == "_hparams_/experiment":
            data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
            columns += [info.name for info in data.experiment.hparam_infos]
  assert sorted(columns) == ["attention", "learning_rate", "tensorboard"]  # no empty column


def test_plot_tensorboard_of_a_sweep_exports_the_trials_that_logged_and_only_what_changed(
    tmp_path):
  """A trial not started yet (no metrics.jsonl) is left out; with stale_only (a sweep's end),
  a trial whose events are newer than its metrics.jsonl is left as it is."""
  pytest.importorskip("tensorboardX")
  from seq2seq_jax import tracking
  sweep = tmp_path / "sweep"
  for trial in ("a", "b", "c"):
    (sweep / trial).mkdir(parents=True)
  (sweep / "sweep.json").write_text(json.dumps({"trials": ["a", "b", "c"]}))
  for trial in ("a", "b"):
    (sweep / trial / "metrics.jsonl").write_text(json.dumps(BUDGET_RUN_RECORDS[1]) + "\n")
  logdirs = tracking.export_tensorboard(str(sweep))
  assert logdirs == [str(sweep / t / "tensorboard") for t in ("a", "b")]
  for trial, metrics_time in (("a", 1_000_000_000), ("b", 4_000_000_000)):  # b: trained on
    events = os.path.join(sweep, trial, "tensorboard", os.listdir(sweep / trial / "tensorboard")[0])
    os.utime(events, (2_000_000_000, 2_000_000_000))
    with open(sweep / trial / "metrics.jsonl", "a") as f:
      f.write(json.dumps({"step": 12, "epoch": 2, "train/loss": 1.25}) + "\n")
    os.utime(sweep / trial / "metrics.jsonl", (metrics_time, metrics_time))
  assert tracking.export_tensorboard(str(sweep), stale_only=True) == logdirs
  assert event_scalars(logdirs[0])["train/loss"] == [(8, 2.0)]  # left as it was
  assert event_scalars(logdirs[1])["train/loss"] == [(8, 2.0), (12, 1.25)]

def test_evaluate_refuses_a_split_other_than_the_one_the_checkpoint_was_trained_with(tmp_path):
  """A tsv: file edited since training, or its relative path read from another directory:
  the split read now has another fingerprint than the one saved with the checkpoint.
  Splits that did not change are scored; --data scores other data on purpose."""
  from seq2seq_jax.data import Splits, check_same_split
  from seq2seq_jax.errors import UserError
  trained = Splits([("one", "un")], [("two", "deux")], [("three", "trois")])
  edited = Splits([("one", "un")], [("two", "deux")], [("four", "quatre")])
  info = trained.info()
  hint = "Pass --data to score other data on purpose."  # evaluate's
  check_same_split(info, edited, "val", "tsv:pairs.tsv", 8, hint)  # the same val pairs
  check_same_split(None, edited, "test", "tsv:pairs.tsv", 8, hint)  # a run that saved none
  with pytest.raises(UserError, match=r"the test split of tsv:pairs.tsv read now is not the one "
                     r"checkpoint 8 was trained with: the data changed, or its relative path is "
                     r"now read from .* \(run it where train ran\)\. Pass --data to score"):
    check_same_split(info, edited, "test", "tsv:pairs.tsv", 8, hint)
  with pytest.raises(UserError, match=r"numbers:fr read now is not the one checkpoint 8 was "
                     r"trained with: the data changed\. Pass --data"):
    check_same_split(info, edited, "test", "numbers:fr", 8, hint)


@pytest.mark.slow
def test_evaluate_of_an_empty_split_says_what_to_score_instead(tmp_path, capsys):
  """A run whose test split holds no pair (numbers_test=0 here; too few pairs for a
  fraction elsewhere) said only that the split is empty."""
  from seq2seq_jax.loop import train_and_evaluate
  workdir = str(tmp_path / "run")
  train_and_evaluate(tiny_config(numbers_test=0, numbers_train=32, num_epochs=1), workdir,
                     progress=False)
  code, out, err = cli_in_process(capsys, "evaluate", "--workdir", workdir)
  assert code == 2 and out == "" and err.splitlines() == [
      "seq2seq-jax evaluate: error: split 'test' of numbers:fr is empty. Score another split "
      "(--split train or val), or a file of pairs with --data FILE --split all."]


def test_running_out_of_memory_is_one_line(capsys, monkeypatch):
  """A NumPy MemoryError (`--config tiny --set batch_size=2000000000`: 231 GiB) was a traceback."""
  from seq2seq_jax import cli

  def plot(args):
    raise MemoryError("Unable to allocate 231. GiB for an array with shape (2000000000, 31)")
  monkeypatch.setattr(cli, "cmd_plot", plot)
  monkeypatch.setattr(cli, "cmd_train", plot)
  code, _, err = cli_in_process(capsys, "train", "--workdir", "w")
  assert code == 2
  assert err.strip().splitlines() == [
      "seq2seq-jax train: error: out of memory (Unable to allocate 231. GiB for an array with "
      "shape (2000000000, 31)); lower batch_size (--set batch_size=N) or the model's size."]
  code, _, err = cli_in_process(capsys, "plot", "--workdir", "w")  # no batch size to lower
  assert code == 2 and err.strip().endswith("; free memory, or run it on a machine with more.")


def test_the_translate_file_script_reads_and_warns_as_translate_does(trained_workdir, tmp_path,
                                                                     capsys, monkeypatch):
  """experiments/translate_file.py: a BOM and CRLF read as translate reads them, its
  warnings, one line per input line, and a missing file as one line, not a traceback."""
  import importlib.util
  import sys
  spec = importlib.util.spec_from_file_location(
      "translate_file", os.path.join(ROOT, "experiments", "translate_file.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  path = tmp_path / "in.txt"
  path.write_bytes("\ufefftwelve\r\nthree\tfour\r\n\r\n".encode("utf-8"))
  monkeypatch.setattr(sys, "argv", ["translate_file.py", "--workdir", trained_workdir, str(path)])
  assert script.main() == 0
  out, err = capsys.readouterr()
  code, translated, _ = cli_in_process(capsys, "translate", "--workdir", trained_workdir,
                                       "twelve", "three\tfour", "")
  assert out.splitlines() == translated.splitlines() and len(out.splitlines()) == 3
  assert "warning: characters never seen in training (read as unknown): '\\t'" in err
  monkeypatch.setattr(sys, "argv", ["translate_file.py", "--workdir", trained_workdir,
                                    str(tmp_path / "nowhere.txt")])
  assert script.main() == 2
  err = capsys.readouterr().err
  assert err.startswith("translate_file: error: data file ") and err.count("\n") == 1


@pytest.mark.slow
def test_a_closed_or_full_standard_output_is_said_once_and_the_command_goes_on(tmp_path,
                                                                               trained_workdir):
  """`train ... | head -1` printed a logging traceback for every message after the pipe
  closed (hundreds in a training), `> /dev/full` the same; `>&-` (no standard output at all)
  ended in a traceback. Now a stream that cannot be written is said once, in one line, and
  the command goes on (a run's messages go on in its train.log); with no standard output
  the command stops in one line before doing anything."""
  import shutil
  import subprocess
  import sys
  workdir = tmp_path / "run"  # a complete run: `train` again says so, in several messages
  shutil.copytree(trained_workdir, workdir)
  command = [sys.executable, "-m", "seq2seq_jax", "train", "--config", "configs/tiny.py",
             "--workdir", str(workdir)]
  read_end, write_end = os.pipe()
  os.close(read_end)  # the reader is gone before the first message: every write fails
  closed = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, timeout=300)
  os.close(write_end)
  results = [(closed, "Broken pipe")]
  if os.path.exists("/dev/full"):  # Linux: a device whose every write fails, disk full
    with open("/dev/full", "w") as full:
      results.append((subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, timeout=300), "No space left on device"))
  for result, why in results:
    lines = result.stderr.splitlines()
    assert result.returncode == 0 and lines.count(
        f"seq2seq-jax: warning: standard output cannot be written ({why}): the messages stop "
        "there (a training's go on in its workdir's train.log).") == 1, result.stderr
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
  no_output = subprocess.run(["bash", "-c", 'exec "$@" >&-', "-", *command],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert no_output.returncode == 2 and no_output.stderr == (
      "seq2seq-jax: error: standard output is closed (>&-): give the command a file, a pipe "
      "or /dev/null for its output.\n")
  # no standard error (2>&-): its messages went into standard output, among the translations
  no_errors = subprocess.run(["bash", "-c", 'exec "$@" 2>&-', "-", sys.executable, "-m",
                              "seq2seq_jax", "translate", "--workdir", str(workdir), "one", "two"],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert no_errors.returncode == 0 and len(no_errors.stdout.splitlines()) == 2, no_errors
  # translate's output is its product: a reader gone ends it quietly, as `| head` expects
  read_end, write_end = os.pipe()
  os.close(read_end)
  cut = subprocess.run([sys.executable, "-m", "seq2seq_jax", "translate", "--workdir",
                        str(workdir), "one", "two"], stdout=write_end, stderr=subprocess.PIPE,
                       text=True, cwd=ROOT, timeout=300)
  os.close(write_end)
  assert cut.returncode == 141 and cut.stderr == "", cut.stderr
  # translate's and evaluate's results that cannot be written are named in one line, exit 2
  # (it was the file system's hint: "No space left on device. Check that the path is right")
  if os.path.exists("/dev/full"):
    for command, what in ((["translate", "one"], "the translations"),
                          (["evaluate", "--split", "test"], "the scores")):
      with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "seq2seq_jax", *command, "--workdir",
                                 str(workdir)], stdout=full, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT, timeout=300)
      assert result.returncode == 2 and result.stderr.splitlines()[-1] == (
          f"seq2seq-jax {command[0]}: error: standard output cannot be written (No space left "
          f"on device): {what} were not all written; send the output where there is room (> FILE)."
      ), result.stderr
      assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
  # with standard input closed too, the next file opened took fd 2 (XLA's messages to fd 2
  # would go into it): every closed standard stream holds /dev/null
  script = ("import os, sys\nfrom seq2seq_jax import cli\nsys.argv = ['seq2seq-jax', 'data']\n"
            "try:\n  cli.main()\nexcept SystemExit:\n  pass\n"
            "print(open(os.devnull).fileno(), file=sys.stdout)\n")
  closed = subprocess.run(["bash", "-c", 'exec "$@" <&- 2>&-', "-", sys.executable, "-c", script],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert int(closed.stdout.split()[-1]) > 2, closed  # not a standard stream's number


# ---------------------------------------------------------------------------
# Decoder flags on a small committed workdir (tests/fixtures/workdir_0.1: no training)
# ---------------------------------------------------------------------------

@pytest.fixture
def small_workdir(tmp_path):
  copy = tmp_path / "workdir_0.1"
  shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "workdir_0.1"), copy)
  return str(copy)


def test_translate_refuses_a_length_penalty_without_beam(small_workdir, capsys):
  """`translate --length-penalty 1` with no --beam is refused in one line: it had
  translated greedily, the penalty silently unused."""
  code, out, err = cli_in_process(capsys, "translate", "--workdir", small_workdir,
                                  "--length-penalty", "1", "twelve")
  assert code == 2 and out == "" and "--length-penalty needs --beam N" in err


def test_sampling_at_temperature_0_translates_as_plain_translate(small_workdir, capsys):
  """--sample --temperature 0 is greedy decoding: the same lines as plain translate (0 had
  read as "not given" and sampled at temperature 1)."""
  sources = ("twelve", "three hundred and forty-five")
  code, plain, _ = cli_in_process(capsys, "translate", "--workdir", small_workdir, *sources)
  assert code == 0
  code, sampled, _ = cli_in_process(capsys, "translate", "--workdir", small_workdir, "--sample",
                                    "--temperature", "0", "--seed", "1", *sources)
  assert code == 0 and sampled == plain


def test_evaluate_json_names_the_default_length_penalty_it_used(small_workdir, capsys):
  """`evaluate --json --beam 2` without --length-penalty decodes with the default 0.6 and
  says so (it said null)."""
  code, out, _ = cli_in_process(capsys, "evaluate", "--workdir", small_workdir, "--json",
                                "--beam", "2")
  assert code == 0
  assert json.loads(out)["decoder"] == {"strategy": "beam", "beam_size": 2, "length_penalty": 0.6}


def test_evaluate_refuses_beam_for_a_series_model(small_workdir, capsys, monkeypatch):
  """A series model has no text to decode: --beam is refused by name, not ignored."""
  from seq2seq_jax import inference
  series = types.SimpleNamespace(is_series=True, config=None)
  monkeypatch.setattr(inference, "load_trained", lambda *args: (series, None, 1))
  code, _, err = cli_in_process(capsys, "evaluate", "--workdir", small_workdir, "--beam", "2")
  assert code == 2 and "--beam: for text models" in err


def _serve_without_serving(monkeypatch, translator):
  """serve's export_workdir replaced by one that records its arguments and returns
  translator; no socket bound. Returns the list of recorded (args, kwargs)."""
  from seq2seq_jax import export, serve
  asked = []

  def fake_export(*args, **kwargs):
    asked.append((args, kwargs))
    if translator is None:
      raise UserError("stop here")
    return translator

  monkeypatch.setattr(export, "export_workdir", fake_export)
  monkeypatch.setattr(serve, "bind_sockets", lambda host, port: [])
  return asked


def test_serve_checkpoint_latest_serves_the_latest(small_workdir, capsys, monkeypatch):
  """`serve --workdir W --checkpoint latest` exports the latest checkpoint, not the best
  (the flag was dropped)."""
  asked = _serve_without_serving(monkeypatch, None)
  code, _, _ = cli_in_process(capsys, "serve", "--workdir", small_workdir, "--checkpoint",
                              "latest", "--port", "0")
  assert code == 2 and len(asked) == 1
  args, _ = asked[0]
  assert args[2] == "latest"


def test_serve_refuses_length_buckets_that_do_not_reach_max_source_len(small_workdir, capsys,
                                                                        monkeypatch):
  """--length-buckets 4 for a model reading 40 tokens: refused before serving (inputs
  longer than every bucket had nowhere to go)."""
  _serve_without_serving(monkeypatch, types.SimpleNamespace(max_source_len=40))
  code, _, err = cli_in_process(capsys, "serve", "--workdir", small_workdir, "--length-buckets",
                                "4", "--port", "0")
  assert code == 2 and "--length-buckets must reach the model's max_source_len=40" in err
