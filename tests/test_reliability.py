"""Failures end in a clear message, no traceback, and nothing already saved is lost.

Bad input (data files, config values, translate inputs, incompatible workdirs) and
faults (SIGINT/SIGTERM, kill -9, damaged checkpoints, a full disk). Subprocess
tests share one uninterrupted run (`baseline`) and a JAX compilation cache, so
each fresh process starts in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2seq_jax import cli
from seq2seq_jax import data as data_lib
from seq2seq_jax.checkpoint import MANIFEST, Checkpointer
from seq2seq_jax.errors import CheckpointError, DataError
from seq2seq_jax.vocab import UNK_ID, Vocab
from tests.conftest import ROOT, cli_in_process, tiny_config, tree_digest, write_tsv

# configs/tiny.py for 12 epochs (7 steps each: 200 pairs in batches of 32, the last one
# short), long enough to interrupt, seconds to run.
SETTINGS = ["num_epochs=12", "log_every_steps=1", "eval_every_epochs=12",
            "num_summary_samples=0"]
TOTAL_STEPS = 84
EPOCH_11_STEP = 77  # the checkpoint before the last: the end of epoch 11


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Environment of every subprocess: a shared persistent compilation cache.

  XLA's own caches are off: they put the cache's path into the cache keys, and
  one test uses a copy of the cache elsewhere.
  """
  cache = tmp_path_factory.mktemp("jax_cache")
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
              JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES="none")


def train_command(workdir, *settings):
  sets = [arg for item in [*SETTINGS, *settings] for arg in ("--set", item)]
  return [sys.executable, "-m", "seq2seq_jax", "train", "--config", "configs/tiny.py",
          "--workdir", str(workdir), *sets]


def run(command, env, input_text=None, timeout=300, **kwargs):
  return subprocess.run(command, input=input_text, capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT, env=env, **kwargs)


def cli_command(*args):
  return [sys.executable, "-m", "seq2seq_jax", *args]


def start(command, env, workdir_logs):
  """A background process whose output goes to files (no pipe to fill up)."""
  out = open(f"{workdir_logs}.out", "w")
  err = open(f"{workdir_logs}.err", "w")
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
  out.close()
  err.close()
  return process


def output_of(logs):
  return open(f"{logs}.out").read(), open(f"{logs}.err").read()


def wait_for(condition, process, what, timeout=180.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    if process.poll() is not None:
      pytest.fail(f"the process ended (rc {process.returncode}) before {what}")
    time.sleep(0.003)
  process.kill()
  pytest.fail(f"timed out waiting for {what}")


def metric_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def logged_step(workdir):
  """The newest step logged in metrics.jsonl (0 before the first)."""
  try:
    records = metric_records(workdir)
  except (OSError, ValueError):
    return 0
  return max((r["step"] for r in records if "train/loss" in r), default=0)


def trained_numbers(workdir):
  """Per-step and per-epoch losses and validation metrics, and the final results.

  Keyed by step and record kind: a resumed run leaves one record of each (asserted).
  """
  numbers = {}
  for record in metric_records(workdir):
    kind = "final" if record.get("final") else ("epoch" if "train/epoch_seconds" in record
                                                else "step")
    kept = {k: v for k, v in record.items()
            if k.startswith(("train/loss", "train/token_accuracy", "val/", "test/"))
            or k in ("lr", "grad_norm")}
    assert (kind, record["step"]) not in numbers, f"{kind} record of step {record['step']} twice"
    numbers[(kind, record["step"])] = kept
  with open(os.path.join(workdir, "results.json")) as f:
    numbers["results"] = json.load(f)
  return numbers


def step_dirs(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def largest_state_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for name in names]
  return max(files, key=os.path.getsize)


def truncate(path, fraction=0.5):
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * fraction))


@contextlib.contextmanager
def captured_logs():
  """Messages of the seq2seq_jax loggers (which do not propagate to the root logger)."""
  messages: list[str] = []

  class Collect(logging.Handler):
    def emit(self, record):
      messages.append(record.getMessage())

  logger = logging.getLogger("seq2seq_jax")
  handler = Collect(level=logging.DEBUG)
  previous_level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    yield messages
  finally:
    logger.removeHandler(handler)
    logger.setLevel(previous_level)


def no_traceback(text):
  return "Traceback" not in text


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, env):
  """configs/tiny.py with SETTINGS, trained without interruption by the command line."""
  workdir = tmp_path_factory.mktemp("baseline") / "run"
  result = run(train_command(workdir), env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert step_dirs(workdir) == [EPOCH_11_STEP, TOTAL_STEPS]
  return str(workdir)


@pytest.fixture
def baseline_copy(baseline, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(baseline, workdir)
  return str(workdir)


# ---------------------------------------------------------------------------
# Bad input: data files
# ---------------------------------------------------------------------------

def test_skipped_bad_lines_are_counted(tmp_path):
  path = tmp_path / "mixed.tsv"
  path.write_text("a\tb\nno tab\nc\td\n\nx\ty\tz\ne\tf\n", encoding="utf-8")
  with captured_logs() as messages:
    pairs = data_lib.tab_pairs(str(path), "tsv", skip_bad_lines=True)
  assert pairs == [("a", "b"), ("c", "d"), ("e", "f")]
  assert any(f"{path}: skipped 2 malformed line(s)" in m for m in messages), messages
  path.write_text("no tab\n\t\nx\t\n", encoding="utf-8")
  with pytest.raises(DataError, match=r"no usable .*\(all 2 non-blank line\(s\) are malformed"):
    data_lib.tab_pairs(str(path), "tsv", skip_bad_lines=True)


def test_non_utf8_position_counts_the_byte_order_mark(tmp_path):
  path = tmp_path / "bom_latin1.tsv"
  path.write_bytes(b"\xef\xbb\xbfab\tc\r\nx\t\xe9t\xe9\r\n")
  with pytest.raises(DataError) as caught:
    data_lib.tab_pairs(str(path), "tsv")
  message = str(caught.value)
  assert message.startswith(f"{path}:2: not UTF-8")
  assert "byte 3 of the line" in message and "byte 12 of the file, counting from 1" in message
  assert "\\xe9" in message and "re-encode" in message


@pytest.mark.parametrize("encoding, iconv_name", [
    ("utf-16", "utf-16"), ("utf-16-le", "utf-16le"), ("utf-16-be", "utf-16be"),
    ("utf-32", "utf-32")])
def test_utf16_data_is_named_as_such(tmp_path, encoding, iconv_name):
  """With or without its byte order mark, a UTF-16 file is named UTF-16, with the iconv
  line for its byte order (not Latin-1's); a UTF-32 one with its mark, UTF-32 (it was
  named UTF-16, and that iconv line gave garbage)."""
  path = tmp_path / "windows.tsv"
  path.write_bytes("one\tun\ntwo\tdeux\n".encode(encoding))
  with pytest.raises(DataError) as caught:
    data_lib.tab_pairs(str(path), "tsv")
  assert str(caught.value) == (f"{path}: {iconv_name[:6].upper()} text, not UTF-8; re-encode "
                               f"the file as UTF-8, e.g. `iconv -f {iconv_name} -t utf-8 IN > OUT`.")


def test_utf16_with_another_script_is_named_and_a_few_bytes_with_a_nul_are_not(tmp_path):
  """English-Russian pairs in UTF-16 (half their characters outside Latin-1) are UTF-16
  too; a short input with one NUL byte, read as UTF-16, makes CJK characters: it is named
  a NUL byte, not UTF-16."""
  path = tmp_path / "rus.tsv"
  path.write_bytes("Hello, world.\tПривет, мир.\nThanks!\tСпасибо!\n".encode("utf-16-le"))
  with pytest.raises(DataError, match=r": UTF-16 text, not UTF-8; .* `iconv -f utf-16le "):
    data_lib.tab_pairs(str(path), "tsv")
  path.write_bytes(b"one\n\x00x\n")
  with pytest.raises(DataError, match=r":2: a NUL byte \(line 2, byte 1 of the line"):
    data_lib.tab_pairs(str(path), "tsv")


def test_a_nul_byte_is_named_where_it_is(tmp_path):
  """Valid UTF-8, but no text file's: not read as a character to train on."""
  path = tmp_path / "binary.tsv"
  path.write_bytes(b"one\tun\ntw\0o\tdeux\n")
  with pytest.raises(DataError) as caught:
    data_lib.tab_pairs(str(path), "tsv")
  assert str(caught.value) == (f"{path}:2: a NUL byte (line 2, byte 3 of the line, byte 10 of "
                               "the file, counting from 1: b'\\x00'): is it a text file? "
                               "Give a UTF-8 text file.")
  # a program (NULs on both sides of its bytes) is no UTF-16 text, nor is it Latin-1
  with open(sys.executable, "rb") as f:
    path.write_bytes(f.read(300))
  with pytest.raises(DataError, match=r":\d+: a NUL byte \(.*\): is it a text file\? Give a UTF-8"):
    data_lib.tab_pairs(str(path), "tsv")


def test_bom_and_crlf_tsv_is_read_like_plain_utf8(tmp_path):
  plain = write_tsv(tmp_path / "plain.tsv", [("un", "one"), ("deux", "two")])
  windows = tmp_path / "windows.tsv"
  windows.write_bytes(b"\xef\xbb\xbfun\tone\r\ndeux\ttwo\r\n")
  assert data_lib.tab_pairs(str(windows), "tsv") == data_lib.tab_pairs(plain, "tsv") == [
      ("un", "one"), ("deux", "two")]


def test_files_joined_with_their_byte_order_marks_read_as_one(tmp_path):
  """`cat a.tsv b.tsv`, each with a BOM: the second's U+FEFF was read as a character of
  its first source (in the vocabulary; "\ufeffdeux" unequal to "deux"). Dropped, with a
  warning naming the first such line."""
  joined = tmp_path / "joined.tsv"
  joined.write_bytes(b"\xef\xbb\xbfun\tone\r\n" + b"\xef\xbb\xbfdeux\ttwo\r\n" * 2)
  with captured_logs() as messages:
    assert data_lib.tab_pairs(str(joined), "tsv") == [("un", "one"), ("deux", "two"),
                                                      ("deux", "two")]
  assert [m for m in messages if "byte order mark" in m] == [
      f"warning: {joined}:2: a byte order mark (U+FEFF) starts this line and 1 more, as where "
      "files were joined; dropped (it would be read as a character of the text)"]


def test_long_pairs_are_counted_in_the_log():
  config = tiny_config(max_source_len=5, max_target_len=5)
  with captured_logs() as messages:
    kept = data_lib.drop_long([("abc", "de"), ("abcdef", "x"), ("a", "abcdefg")], config, "train")
  assert kept == [("abc", "de")]
  assert any("train: dropped 2 of 3 pairs longer than max_source_len=5 / max_target_len=5"
             in m for m in messages), messages


@pytest.mark.parametrize("content, expected", [
    (b"one\tun\nno tab here\n", r"bad.tsv:2: expected source<TAB>target, found 1 column\(s\).*"
                                 r"skip_bad_lines=true"),
    (b"one\tun\n\tvide\n", r"bad.tsv:2: expected source<TAB>target, found an empty source"),
    (b"one\tun\ntwo\t  \n", r"bad.tsv:2: expected source<TAB>target, found an empty target"),
    (b"one\tun\nHi\rthere\tSalut\n", r"bad.tsv:2: .*found a carriage return \(\\r\) inside"),
    (b"one\tun\ncaf\xe9\tcoffee\n", r"bad.tsv:2: not UTF-8"),
    (b"", r"bad.tsv: no usable source<TAB>target pair found \(the file is empty"),
    (b"\n\t\n \r\n", r"bad.tsv: no usable .*only blank lines"),
    (None, r"data file '.*missing.tsv' does not exist\. Check the path\.$"),
])
def test_train_stops_on_bad_data_with_a_clear_error(tmp_path, capsys, content, expected):
  path = tmp_path / ("missing.tsv" if content is None else "bad.tsv")
  if content is not None:
    path.write_bytes(content)
  code, out, err = cli_in_process(capsys, "train", "--config", "configs/tiny.py",
                                  "--workdir", str(tmp_path / "run"), "--data", f"tsv:{path}")
  assert code == 2
  assert re.search(r"seq2seq-jax train: error: .*" + expected, err), err
  assert not os.path.exists(tmp_path / "run" / "checkpoints") or not step_dirs(tmp_path / "run")


def test_train_refuses_data_whose_pairs_are_all_too_long(tmp_path, capsys):
  path = write_tsv(tmp_path / "long.tsv", [("a" * 50, "b"), ("c" * 60, "d")] * 10)
  code, _, err = cli_in_process(capsys, "train", "--config", "configs/tiny.py", "--workdir",
                                str(tmp_path / "run"), "--data", f"tsv:{path}",
                                "--set", "val_fraction=0", "--set", "test_fraction=0")
  assert code == 2 and "no training pair fits max_source_len/max_target_len" in err


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r\r\n", b"\r"])
def test_every_line_ending_reads_the_same_pairs(tmp_path, ending):
  """Unix, Windows, a Windows file converted twice (CRCRLF) and old Mac files."""
  path = tmp_path / "pairs.tsv"
  path.write_bytes(ending.join([b"one\tun", b"two\tdeux", b""]))
  assert data_lib.tab_pairs(str(path), "tsv") == [("one", "un"), ("two", "deux")]


def test_a_stray_carriage_return_inside_a_line_is_named_not_taken_for_a_line_end(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_bytes(b"one\tun\nHi\rthere\tSalut\nthree\ttrois\n")
  with pytest.raises(DataError, match=r"pairs.tsv:2: .*carriage return"):
    data_lib.tab_pairs(str(path), "tsv")
  # skipped as a whole: "there" is no source of its own
  assert data_lib.tab_pairs(str(path), "tsv", skip_bad_lines=True) == [
      ("one", "un"), ("three", "trois")]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"a", b"\t", b"\n", b"\r", b"\r\n", b" ", b"\xef\xbb\xbf",
                              b"\xe9", b"\xc3\xa9", b"\x00", b"\xff", "\u2028".encode()]),
             max_size=40).map(b"".join)),
       kind=st.sampled_from(["tsv", "anki"]), skip=st.booleans())
def test_parser_raises_only_data_error_on_any_bytes(tmp_path, raw, kind, skip):
  path = tmp_path / "any.txt"
  path.write_bytes(raw)
  try:
    pairs = data_lib.tab_pairs(str(path), kind, skip_bad_lines=skip)
  except DataError as error:
    assert str(error)  # a message, never an empty one
    return
  assert pairs
  for source, target in pairs:
    assert source.strip() and target.strip()
    assert not {"\t", "\n", "\r"} & set(source + target)
  try:  # the whole path a tsv:/anki: spec takes: parse, split, encode
    splits = data_lib.load_splits(tiny_config(data=f"{kind}:{path}", skip_bad_lines=skip))
  except DataError:
    return
  src_vocab, tgt_vocab = data_lib.build_vocabs(splits.train)
  encoded = data_lib.encode_pairs(splits.train, src_vocab, tgt_vocab)
  assert len(encoded) == len(splits.train) > 0


@settings(max_examples=300, deadline=None)
@given(corpus=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5),
       data=st.data())
def test_vocab_round_trips_text_of_known_characters(corpus, data):
  vocab = Vocab.build(corpus)
  text = data.draw(st.text(alphabet=st.sampled_from(vocab.chars), max_size=50))
  ids = vocab.encode(text)
  assert UNK_ID not in ids and all(4 <= i < len(vocab) for i in ids)
  assert vocab.decode(ids) == text
  assert Vocab.from_list(vocab.to_list()).decode(ids) == text
  unknown = data.draw(st.characters().filter(lambda ch: ch not in vocab.chars))
  assert vocab.encode(text + unknown)[-1] == UNK_ID
  assert vocab.unknown_chars(text + unknown) == {unknown}


# ---------------------------------------------------------------------------
# Bad input: configuration
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("item, expected", [
    ("latent_dimm=3", r"unknown config key 'latent_dimm' in --set\. Did you mean latent_dim, "),
    ("batch_size=abc", r"--set batch_size=abc: 'abc' is not a valid int"),
    ("learning_rate=fast", r"'fast' is not a valid float"),
    ("batch_size=0", r"'batch_size' must be positive; got 0"),
    ("max_source_len=-5", r"'max_source_len' must be positive; got -5"),
    ("dropout=-0.5", r"'dropout' must be in \[0, 1\)"),
    ("learning_rate=0", r"'learning_rate' must be positive; got 0\.0"),  # trains nothing
    ("rmsprop_eps=0", r"'rmsprop_eps' must be positive; got 0\.0"),  # NaN at the 2nd step
])
def test_bad_config_values_are_named(tmp_path, capsys, item, expected):
  code, _, err = cli_in_process(capsys, "train", "--config", "configs/tiny.py",
                                "--workdir", str(tmp_path / "run"), "--set", item)
  assert code == 2 and re.search(expected, err), err
  assert not (tmp_path / "run").exists()  # refused before anything is written


# ---------------------------------------------------------------------------
# Workdirs: one run at a time, each command given the kind of directory it takes
# ---------------------------------------------------------------------------

def test_a_second_run_in_a_busy_workdir_is_refused_and_the_lock_dies_with_its_process(
    tmp_path, capsys):
  """The same command started again in another terminal would write every record twice:
  it is refused in one line while the first runs; a killed run holds nothing."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from seq2seq_jax import workdir as w\n"
       "with w.exclusive(sys.argv[1]):\n  print('held', flush=True); time.sleep(120)",
       str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    code, _, err = cli_in_process(capsys, "train", "--config", "configs/tiny.py",
                                  "--workdir", str(workdir))
    assert code == 2 and err.strip().splitlines() == [
        f"seq2seq-jax train: error: workdir '{workdir}' is in use by a run training there "
        f"(pid {holder.pid} on {os.uname().nodename}): wait for it to end or stop it; for "
        "another run at the same time, give a new --workdir."]
    assert sorted(os.listdir(workdir)) == [".lock"]  # nothing of the refused run
  finally:
    holder.kill()
    holder.wait()
  from seq2seq_jax import workdir as workdir_lib
  with workdir_lib.exclusive(str(workdir)):  # kill -9 released it
    pass



def test_a_busy_workdir_whose_holder_has_not_said_who_it_is_names_another_process(tmp_path):
  """A run between taking the lock and writing its pid in it (or of a version that wrote
  none): the line still says the workdir is busy, held by "another process"."""
  import fcntl
  from seq2seq_jax import workdir as workdir_lib
  fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(workdir_lib.WorkdirBusy, match=r"in use by a run training there "
                       r"\(another process\): wait"):
      with workdir_lib.exclusive(str(tmp_path)):
        pass
    assert workdir_lib.training_there(str(tmp_path)) == "another process"
  finally:
    os.close(fd)
  assert workdir_lib.training_there(str(tmp_path)) is None

def test_a_run_refused_before_it_wrote_anything_leaves_no_workdir(tmp_path, capsys):
  """Data that cannot be read, or no pair that fits: no workdir holding only its log is
  left to be mistaken for a run (nor the folders made above it); an existing one stays."""
  for refused in (["--data", "foo:bar"], ["--data", f"tsv:{tmp_path / 'missing.tsv'}"],
                  ["--set", "max_source_len=1"]):  # its train.log holds the data's line
    code, _, err = cli_in_process(capsys, "train", "--config", "configs/tiny.py",
                                  "--workdir", str(tmp_path / "new" / "runs" / "a"), *refused)
    assert code == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()  # nor the folders made above it
  (tmp_path / "mine").mkdir()
  code, _, _ = cli_in_process(capsys, "train", "--config", "configs/tiny.py",
                              "--workdir", str(tmp_path / "mine"), "--data", "foo:bar")
  assert code == 2 and (tmp_path / "mine").is_dir()


def test_sweeps_runs_and_exports_are_told_apart(tmp_path, capsys):
  """A sweep's directory (one workdir per trial), a run's workdir and an export each go
  to the commands that take them; the others name the right one, writing nothing."""
  sweep_dir = tmp_path / "sweep"
  (sweep_dir / "learning_rate=0.001" / "checkpoints").mkdir(parents=True)
  (sweep_dir / "sweep.json").write_text("{}")
  for command in (["train", "--config", "configs/tiny.py"], ["translate"], ["evaluate"],
                  ["export", "--out", str(tmp_path / "ex")]):
    text = ["x"] if command == ["translate"] else []
    code, _, err = cli_in_process(capsys, *command, "--workdir", str(sweep_dir), *text)
    assert code == 2 and err.strip().splitlines() == [
        f"seq2seq-jax {command[0]}: error: '{sweep_dir}' is a sweep's directory (sweep.json), "
        f"one workdir per trial: give a trial's, e.g. {sweep_dir / 'learning_rate=0.001'} "
        "(`seq2seq-jax sweep` trains them)."], err
  assert sorted(os.listdir(sweep_dir)) == ["learning_rate=0.001", "sweep.json"]
  export_dir = tmp_path / "export"
  export_dir.mkdir()
  (export_dir / "manifest.json").write_text("{}")
  code, _, err = cli_in_process(capsys, "translate", "--workdir", str(export_dir), "x")
  assert code == 2 and f"'{export_dir}' is an export, not a training workdir: serve it " \
      f"with `seq2seq-jax serve --exported {export_dir}`" in err
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text("{}")
  code, _, err = cli_in_process(capsys, "sweep", "--config", "configs/sweep_tiny.py",
                                "--workdir", str(run_dir))
  assert code == 2 and err.strip().splitlines()[-1] == (
      f"seq2seq-jax sweep: error: '{run_dir}' holds a training run (config.json), not a "
      "sweep: give the sweep a new --workdir.")
  assert os.listdir(run_dir) == ["config.json"]
  (run_dir / "checkpoints" / "235").mkdir(parents=True)  # its checkpoints are not a run
  from seq2seq_jax.workdir import check_run_directory
  check_run_directory(str(run_dir / "checkpoints" / "run1"))  # config.json alone: a project's
  (run_dir / "run.json").write_text("{}")  # config.json and run.json: a run's
  for inside in (run_dir / "checkpoints", run_dir / "checkpoints" / "235"):
    for command in (["train", "--config", "configs/tiny.py"], ["evaluate"]):
      code, _, err = cli_in_process(capsys, *command, "--workdir", str(inside))
      assert code == 2 and err.strip().splitlines() == [
          f"seq2seq-jax {command[0]}: error: '{inside}' is part of the checkpoints of the run "
          f"in '{run_dir}', not a run: give the run's workdir, --workdir {run_dir}."], err
  assert os.listdir(run_dir / "checkpoints" / "235") == []
  check_run_directory(str(run_dir / "retry"))  # a new run's workdir inside a run's is a run's
  (run_dir / "manifest.json").write_text("{}")  # a run exported into its own workdir: a run
  check_run_directory(str(run_dir))
  (run_dir / "run.json").unlink()
  code, _, err = cli_in_process(capsys, "sweep", "--config", "configs/sweep_tiny.py",
                                "--workdir", str(run_dir / "config.json"))
  assert code == 2 and err.strip().splitlines()[-1] == (
      f"seq2seq-jax sweep: error: workdir '{run_dir / 'config.json'}' is a file, not a "
      "directory: give the sweep a directory (a new one starts it, its own one resumes it).")


# ---------------------------------------------------------------------------
# Bad input: translate
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_translate_odd_inputs_one_line_each(baseline, env):
  long_input = "one hundred and " * 10  # 160 characters; max_source_len is 40
  inputs = ["twelve!", "", long_input, "z?", "seven"]
  result = run(cli_command("translate", "--workdir", baseline),
               env, input_text="\n".join(inputs) + "\n")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.split("\n")
  assert lines[-1] == "" and len(lines[:-1]) == len(inputs)  # one line per input line
  assert lines[1] == ""  # an empty input gives an empty output line
  unknown = [l for l in result.stderr.splitlines() if "never seen in training" in l]
  assert len(unknown) == 1 and "'!'" in unknown[0] and "'?'" in unknown[0]
  assert "1 input(s) longer than max_source_len=40 characters were truncated" in result.stderr
  assert no_traceback(result.stderr)
  # the truncated input translates as its first 40 characters
  cut = run(cli_command("translate", "--workdir", baseline, long_input[:40], "seven"), env)
  assert cut.stdout.splitlines() == [lines[2], lines[4]]


@pytest.mark.slow
def test_translate_rejects_non_utf8_stdin(baseline, env):
  result = subprocess.run(cli_command("translate", "--workdir", baseline),
                          input=b"twelve\ncaf\xe9\n", capture_output=True, timeout=300,
                          cwd=ROOT, env=env)
  stderr = result.stderr.decode()
  assert result.returncode == 2 and "standard input:2: not UTF-8 (line 2, byte 4 of the line" in stderr
  assert no_traceback(stderr)
  # UTF-16 without its byte order mark (PowerShell's `>`), and binary data: named as in a
  # data file (they were read as text, NUL bytes and all, one output line more than given)
  for raw, says in (("twelve\nthree\n".encode("utf-16-le"),
                     "standard input: UTF-16 text, not UTF-8; re-encode the input as UTF-8, e.g. "
                     "`iconv -f utf-16le -t utf-8 IN > OUT`."),
                    (b"twelve\n\x00\x01three\n", "standard input:2: a NUL byte (line 2, byte 1 "
                                                   "of the line")):
    result = subprocess.run(cli_command("translate", "--workdir", baseline), input=raw,
                            capture_output=True, timeout=300, cwd=ROOT, env=env)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and result.stdout == b"" and len(lines) == 1, lines
    assert lines[0].startswith(f"seq2seq-jax translate: error: {says}"), lines
  # the same bytes as an argument (was translated, with the escape '\udce9' called unseen)
  result = subprocess.run(cli_command("translate", "--workdir", baseline, "twelve", b"caf\xe9"),
                          capture_output=True, timeout=300, cwd=ROOT, env=env)
  assert result.returncode == 2 and result.stdout == b"", result.stderr
  assert result.stderr.decode().splitlines() == [
      "seq2seq-jax translate: error: argument 2: not UTF-8 (b'\\xe9'); give the text in UTF-8 "
      "(or on standard input, re-encoded as UTF-8)."]


def test_workdir_without_a_finished_checkpoint(tmp_path, capsys):
  """An empty workdir, and one where a kill -9 interrupted the very first save."""
  empty = tmp_path / "empty"
  empty.mkdir()
  code, _, err = cli_in_process(capsys, "translate", "--workdir", str(empty), "one")
  assert code == 2 and "no checkpoint in" in err and "Train first" in err
  # a run training there before its first save: said, not "Train first" (it was)
  from seq2seq_jax.workdir import exclusive
  with exclusive(str(empty)):
    code, _, err = cli_in_process(capsys, "translate", "--workdir", str(empty), "one")
  assert code == 2 and err.count("\n") == 1 and "Train first" not in err
  assert (f"A run is training there (pid {os.getpid()} on " in err
          and "and has not saved its first checkpoint: wait for it to save one." in err)
  code, _, err = cli_in_process(capsys, "translate", "--workdir", str(empty), "one")
  assert "Train first" in err  # its lock file stays, free
  unfinished = tmp_path / "killed" / "checkpoints" / "1.orbax-checkpoint-tmp" / "state"
  unfinished.mkdir(parents=True)
  (unfinished / "partial").write_bytes(b"\0" * 10)
  code, _, err = cli_in_process(capsys, "evaluate", "--workdir", str(tmp_path / "killed"))
  assert code == 2 and "no checkpoint in" in err
  assert unfinished.exists()  # reading never deletes anything


@pytest.mark.slow
def test_incompatible_workdir_is_refused_untouched(baseline_copy, env):
  before = tree_digest(os.path.join(baseline_copy, "checkpoints"))
  config_before = open(os.path.join(baseline_copy, "config.json")).read()
  result = run(train_command(baseline_copy, "latent_dim=24"), env)
  assert result.returncode == 2
  assert "holds a run with a different configuration (latent_dim: 32 -> 24)" in result.stderr
  assert "run the same command as before" in result.stderr and "new --workdir" in result.stderr
  assert no_traceback(result.stderr)
  assert tree_digest(os.path.join(baseline_copy, "checkpoints")) == before
  assert open(os.path.join(baseline_copy, "config.json")).read() == config_before


# ---------------------------------------------------------------------------
# Faults: signals, kill -9
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sigint_and_sigterm_save_and_the_same_command_resumes_exactly(baseline, env, tmp_path):
  """SIGINT, the same command again, SIGTERM, the same command again to the end."""
  workdir = tmp_path / "run"
  stopped = 0
  for signum in (signal.SIGINT, signal.SIGTERM):
    logs = tmp_path / f"signal{int(signum)}"
    process = start(train_command(workdir), env, logs)
    target = stopped + 3
    wait_for(lambda: logged_step(workdir) >= target, process, f"step {target}")
    process.send_signal(signum)
    assert process.wait(timeout=120) == 130
    out, err = output_of(logs)
    match = re.search(rf"stopped by signal {int(signum)} at step (\d+); checkpoint saved\. "
                      r"Run the same command again to resume\.", err)
    assert match, out[-2000:] + err[-2000:]
    assert no_traceback(err)
    if stopped:
      assert f"resumed from checkpoint {stopped} " in out
    stopped = int(match.group(1))
    assert target <= stopped < TOTAL_STEPS
    assert step_dirs(workdir)[-1] == stopped  # saved at the step it stopped
    assert logged_step(workdir) == stopped  # and every step before it was logged

  resumed = run(train_command(workdir), env)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert f"resumed from checkpoint {stopped} " in resumed.stdout
  assert "not settling" not in resumed.stdout  # the shapes a part epoch missed are no sign
  assert trained_numbers(workdir) == trained_numbers(baseline)


@pytest.mark.slow
def test_the_same_command_on_a_finished_run_has_nothing_to_do(baseline_copy, env):
  """It says so with the saved final metrics; no evaluation again, no second final record
  in metrics.jsonl, nothing in the workdir's results or checkpoints changed."""
  files = ("metrics.jsonl", "results.json")
  before = [open(os.path.join(baseline_copy, name)).read() for name in files]
  checkpoints = tree_digest(os.path.join(baseline_copy, "checkpoints"))
  result = run(train_command(baseline_copy), env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (f"resumed from checkpoint {TOTAL_STEPS} (after its last epoch, 12 of 12)"
          in result.stdout)
  assert (f"is complete (checkpoint {TOTAL_STEPS}, epoch 12 of 12): nothing to train. Its final "
          "evaluation (results.json): val/loss " in result.stdout)
  assert "final (checkpoint" not in result.stdout  # not evaluated again
  assert [open(os.path.join(baseline_copy, name)).read() for name in files] == before
  assert tree_digest(os.path.join(baseline_copy, "checkpoints")) == checkpoints


STARTUP_STOP = ("seq2seq-jax train: interrupted by {}. Checkpoints saved before are kept: run the "
                "same command again to resume.")


@pytest.mark.slow
@pytest.mark.parametrize("signum, delay", [(signal.SIGINT, 0.7), (signal.SIGTERM, 1.2)])
def test_a_signal_while_training_starts_ends_it_with_one_line(env, tmp_path, signum, delay):
  """Between the data and the first step (JAX starting, compiling: XLA's threads busy)
  a signal used to be lost (the run trained to the end) or to crash the process after its
  message (exit 139). It ends the command with its message, exit 130, nothing after it (on
  a slow machine the signal may come after the first step: the loop's message then)."""
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  process = start(train_command(workdir), env, logs)
  wait_for(lambda: "data " in output_of(logs)[0], process, "the data line")
  time.sleep(delay)
  process.send_signal(signum)
  assert process.wait(timeout=120) == 130
  out, err = output_of(logs)
  last = err.strip().splitlines()[-1]
  in_training = re.fullmatch(rf"seq2seq-jax train: stopped by signal {int(signum)} at step (\d+); "
                             r"checkpoint saved\. Run the same command again to resume\.", last)
  assert last == STARTUP_STOP.format(signal.Signals(signum).name) or in_training, err
  assert "Fatal Python error" not in err and no_traceback(err)
  assert logged_step(workdir) == (int(in_training.group(1)) if in_training else 0)


def test_a_signal_during_a_commands_first_imports_is_raised_once_they_are_done():
  """A KeyboardInterrupt raised inside a compiled extension's initialisation (jaxlib,
  TensorStore) crashed the process with no message or left a half-imported module: during
  those imports the signal is only recorded, and raised when they are done."""
  from seq2seq_jax import runtime
  previous = runtime.install_stop_handlers()
  imports_done = False
  try:
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
      with runtime.stop_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs meanwhile: it records and does not raise
        imports_done = True
  finally:
    runtime.restore_handlers(previous)
  assert imports_done and runtime.stop_signal_received() is None  # forgotten with the handlers


def test_a_signal_whose_interrupt_is_lost_still_stops_training(tmp_path, capsys, monkeypatch):
  """Python drops a KeyboardInterrupt raised inside a callback of XLA's (jax's garbage-
  collection hook), and the command went on to train to the end as if nothing had
  happened. The signal is recorded, and training does not start."""
  from seq2seq_jax import loop
  open_group = loop._open_group

  def open_group_losing_a_sigint(*args, **kwargs):
    group = open_group(*args, **kwargs)
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)  # the handler raises here
    except KeyboardInterrupt:
      pass  # what XLA's callback does with it
    return group

  monkeypatch.setattr(loop, "_open_group", open_group_losing_a_sigint)
  handler = signal.getsignal(signal.SIGINT)
  code, out, err = cli_in_process(capsys, "train", "--config", "configs/tiny.py", "--workdir",
                                  str(tmp_path / "run"), "--set", "num_epochs=1")
  assert code == 130
  assert err.strip().splitlines()[-1] == STARTUP_STOP.format("SIGINT")
  assert "step " not in out and logged_step(tmp_path / "run") == 0
  assert signal.getsignal(signal.SIGINT) is handler  # the command's handlers are gone


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume(baseline, env, tmp_path):
  """Three kill -9 (first save, a later save, between steps), then the same command."""
  workdir = tmp_path / "run"
  command = train_command(workdir, "checkpoint_every_steps=3")
  checkpoints = workdir / "checkpoints"

  def entries():
    return os.listdir(checkpoints) if checkpoints.is_dir() else []

  def saving(minimum):
    return any(name.endswith(".orbax-checkpoint-tmp") and int(name.split(".")[0]) >= minimum
               for name in entries())

  def kill_when(condition, what, name):
    process = start(command, env, tmp_path / name)
    wait_for(condition, process, what)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    steps = step_dirs(workdir)
    if steps:  # the newest finished step reads back, verified by its manifest
      state, meta, step = Checkpointer(str(workdir), read_only=True).restore(
          step=steps[-1], fallback=False)
      assert step == steps[-1] == meta["step"] == int(np.asarray(state["step"]))
    return steps

  # 1: as soon as the first checkpoint directory appears (the first save is under way)
  seen = kill_when(lambda: entries(), "a checkpoint directory", "kill1")
  # 2: during a later save (its temporary directory exists)
  target = (seen[-1] if seen else 0) + 4
  seen = kill_when(lambda: saving(target), f"a save after step {target}", "kill2")
  assert seen and seen[-1] >= target - 3
  # 3: at an arbitrary moment between steps
  target = seen[-1] + 5
  seen = kill_when(lambda: logged_step(workdir) >= target, f"step {target}", "kill3")
  # what a kill during a save, or during the deletion of an old step, leaves behind
  newest = seen[-1]
  leftover = checkpoints / f"{newest + 1}.orbax-checkpoint-tmp"  # a step never saved again
  shutil.copytree(checkpoints / str(newest), leftover, dirs_exist_ok=True)
  truncate(largest_state_file(str(leftover)))
  if len(seen) > 1:
    for root, _, names in os.walk(checkpoints / str(seen[-2]) / "state"):
      for name in names[::2]:
        os.remove(os.path.join(root, name))

  final = run(command, env)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  assert f"resumed from checkpoint {newest} " in final.stdout
  assert not any("orbax-checkpoint-tmp" in name for name in entries())
  assert step_dirs(workdir) == [TOTAL_STEPS - 3, TOTAL_STEPS]
  assert trained_numbers(workdir) == trained_numbers(baseline)
  steps = [r["step"] for r in metric_records(workdir)]
  assert steps == sorted(steps)  # the curves never go back in time


def test_a_workdir_of_another_configuration_names_every_difference(tmp_path):
  """The first six with their values, then the names of the rest (they used to be left out)."""
  from seq2seq_jax.config import Config
  from seq2seq_jax.errors import UserError
  from seq2seq_jax.workdir import check_workdir_config, write_config
  write_config(str(tmp_path), Config())
  changes = dict(embed_dim=8, latent_dim=8, batch_size=8, num_epochs=1, warmup_steps=1,
                 dropout=0.5, learning_rate=0.1, seed=3)
  with pytest.raises(UserError) as refused:
    check_workdir_config(str(tmp_path), dataclasses.replace(Config(), **changes))
  message = str(refused.value)
  assert sum(f"{key}: " in message for key in changes) == 6
  assert "; and 2 more: " in message and all(key in message for key in changes)


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
  from seq2seq_jax.workdir import rewind_metrics
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "train/loss": 1.0 / s}) for s in (10, 20, 30, 40)]
  path.write_text("\n".join(lines) + '\n{"step": 5')  # a kill -9 mid-line
  assert rewind_metrics(str(tmp_path), 20) == 3
  assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
  assert rewind_metrics(str(tmp_path), 20) == 0  # nothing else changes
  assert rewind_metrics(str(tmp_path / "none"), 20) == 0  # no metrics.jsonl yet



def test_metrics_records_are_appended_and_stay_readable_after_a_resume(tmp_path):
  """Each record is a line added to metrics.jsonl; a last record a kill left without its
  line end is kept with one, so the resumed run's next record is a line of its own."""
  from seq2seq_jax.workdir import append_metrics, read_metrics, rewind_metrics
  append_metrics(str(tmp_path), {"step": 10, "train/loss": np.float32(0.5)})
  append_metrics(str(tmp_path), {"step": 20, "train/loss": 0.25})
  assert read_metrics(str(tmp_path)) == [{"step": 10, "train/loss": 0.5},
                                         {"step": 20, "train/loss": 0.25}]
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 10}\n\xff\n{"step": 20}')  # damaged, then no line end
  assert rewind_metrics(str(tmp_path), 20) == 1
  append_metrics(str(tmp_path), {"step": 30})
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [10, 20, 30]

def test_damaged_metrics_lines_are_skipped_when_read_and_dropped_on_resume(tmp_path, caplog):
  """Bytes that are not UTF-8, a line that is no JSON object: `plot`, sweeps' tables and
  a resume read past them (they used to stop with a UnicodeDecodeError traceback), and the
  resume says they were unreadable, not logged after its checkpoint."""
  from seq2seq_jax.workdir import read_metrics, rewind_metrics
  path = tmp_path / "metrics.jsonl"
  good = [json.dumps({"step": s, "train/loss": 1.0 / s}) for s in (10, 20)]
  path.write_bytes(("\n".join(good) + "\n").encode() + b'\xff\xfe\n7\n{"step": "x"}\n')
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [10, 20]
  with caplog.at_level("INFO", logger="seq2seq_jax"):
    assert rewind_metrics(str(tmp_path), 20) == 3
  assert "dropped 3 unreadable line(s)" in caplog.text and "after checkpoint" not in caplog.text
  assert path.read_text() == "\n".join(good) + "\n"


# ---------------------------------------------------------------------------
# Faults: damaged checkpoints
# ---------------------------------------------------------------------------

def damage_truncate(step_dir):
  truncate(largest_state_file(step_dir))


def damage_delete_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


def damage_garbled_meta(step_dir):
  with open(os.path.join(step_dir, "meta", "metadata"), "r+b") as f:
    f.write(b"}{ not json")


def damage_flipped_bytes(step_dir):
  path = largest_state_file(step_dir)
  with open(path, "rb") as f:
    data = bytearray(f.read())
  data[len(data) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


def damage_truncate_without_manifest(step_dir):
  """A step written before manifests existed: Orbax itself finds the damage."""
  os.remove(os.path.join(step_dir, MANIFEST))
  truncate(largest_state_file(step_dir), 0.3)


@contextlib.contextmanager
def reports_left_behind():
  """What reaches sys.unraisablehook, the asyncio logger or a RuntimeWarning in the block,
  or at a garbage collection after it: where a program's stray "Exception ignored"
  tracebacks and "never awaited" warnings come from."""
  reports: list[str] = []

  class Collect(logging.Handler):
    def emit(self, record):
      reports.append(record.getMessage()[:200])

  previous_hook, handler = sys.unraisablehook, Collect()
  sys.unraisablehook = lambda unraisable: reports.append(repr(unraisable.exc_value)[:200])
  logging.getLogger("asyncio").addHandler(handler)
  try:
    with warnings.catch_warnings(record=True) as caught:  # "coroutine ... was never awaited"
      warnings.simplefilter("always", RuntimeWarning)
      yield reports
      gc.collect()
      time.sleep(0.2)  # the callbacks of reads still in flight, if any were left running
      gc.collect()
    reports += [str(w.message)[:200] for w in caught if issubclass(w.category, RuntimeWarning)]
  finally:
    logging.getLogger("asyncio").removeHandler(handler)
    sys.unraisablehook = previous_hook


@pytest.mark.parametrize("damage", [damage_truncate, damage_delete_state, damage_garbled_meta,
                                    damage_flipped_bytes, damage_truncate_without_manifest])
@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back(baseline, baseline_copy, capfd, damage):
  """With a warning naming the damage, and nothing after it: Orbax's abandoned reads leave
  no report behind for a later garbage collection in the user's program to print."""
  damage(os.path.join(baseline_copy, "checkpoints", str(TOTAL_STEPS)))
  with reports_left_behind() as reports, captured_logs() as messages:
    state, meta, step = Checkpointer(baseline_copy, read_only=True).restore()
    best_state, _, best = Checkpointer(baseline_copy, read_only=True).restore(step=TOTAL_STEPS)
  assert reports == []
  assert step == best == EPOCH_11_STEP and meta["step"] == EPOCH_11_STEP
  assert any(f"checkpoint {TOTAL_STEPS} in " in m and "is damaged" in m for m in messages)
  assert f"warning: restored checkpoint {EPOCH_11_STEP} instead of the damaged checkpoint {TOTAL_STEPS}" \
      in messages
  intact, _, _ = Checkpointer(baseline, read_only=True).restore(step=EPOCH_11_STEP)
  jax.tree.map(np.testing.assert_array_equal, state["params"], intact["params"])
  # a step asked for by number (`--checkpoint N`) is not replaced: the error names the others
  with pytest.raises(CheckpointError, match=rf"checkpoint {TOTAL_STEPS} in .* is damaged \(step "
                     rf"{TOTAL_STEPS}: .*\)\. Choose another: {EPOCH_11_STEP} \(or best / latest"):
    Checkpointer(baseline_copy, read_only=True).restore(step=TOTAL_STEPS, fallback=False)
  assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow
def test_damaged_metrics_leave_the_checkpoint_usable(baseline_copy):
  """The metrics in a step's manifest (Orbax writes no metrics file of its own)."""
  path = os.path.join(baseline_copy, "checkpoints", str(TOTAL_STEPS), MANIFEST)
  with open(path) as f:
    manifest = json.load(f)
  assert manifest["metrics"]["val/exact_match"] is not None
  assert not os.path.exists(os.path.join(os.path.dirname(path), "metrics"))
  manifest["metrics"] = "{trunc"
  with open(path, "w") as f:
    json.dump(manifest, f)
  with captured_logs() as messages:
    checkpointer = Checkpointer(baseline_copy, read_only=True)
    _, _, step = checkpointer.restore()
    best = checkpointer.best_step()
  assert step == TOTAL_STEPS and best is None
  assert any(f"metrics of checkpoint {TOTAL_STEPS} are unreadable" in m for m in messages)


@pytest.mark.slow
def test_translate_falls_back_from_a_damaged_newest_checkpoint(baseline_copy, env):
  for step in (EPOCH_11_STEP, TOTAL_STEPS):  # as written by a version without manifests
    os.remove(os.path.join(baseline_copy, "checkpoints", str(step), MANIFEST))
  damage_truncate(os.path.join(baseline_copy, "checkpoints", str(TOTAL_STEPS)))
  result = run(cli_command("translate", "--workdir", baseline_copy, "twelve", "", "seven"), env)
  assert result.returncode == 0, result.stderr
  assert len(result.stdout.split("\n")) == 4
  assert f"checkpoint {TOTAL_STEPS} in" in result.stderr
  assert f"restored checkpoint {EPOCH_11_STEP} instead of the damaged checkpoint {TOTAL_STEPS}" in result.stderr
  assert no_traceback(result.stderr), result.stderr


@pytest.mark.slow
def test_all_checkpoints_damaged_is_a_clear_error(baseline_copy, env):
  for step in (EPOCH_11_STEP, TOTAL_STEPS):
    damage_truncate(os.path.join(baseline_copy, "checkpoints", str(step)))
  result = run(cli_command("evaluate", "--workdir", baseline_copy), env)
  assert result.returncode == 2
  assert re.search(r"seq2seq-jax evaluate: error: no readable checkpoint in '.*' "
                   rf"\(step {TOTAL_STEPS}: .*; step {EPOCH_11_STEP}: .*\)\. Start a fresh run",
                   result.stderr), result.stderr
  assert no_traceback(result.stderr)


@pytest.mark.slow
def test_resume_after_a_damaged_newest_checkpoint(baseline, baseline_copy, env):
  newest = os.path.join(baseline_copy, "checkpoints", str(TOTAL_STEPS))
  damage_truncate(newest)
  damaged = tree_digest(newest)
  result = run(train_command(baseline_copy), env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  output = result.stdout + result.stderr
  assert f"restored checkpoint {EPOCH_11_STEP} instead of the damaged checkpoint {TOTAL_STEPS}" in output
  assert f"resumed from checkpoint {EPOCH_11_STEP} " in output
  # the damaged copy is kept aside, the step is written again
  assert tree_digest(newest + ".damaged") == damaged
  assert step_dirs(baseline_copy) == [EPOCH_11_STEP, TOTAL_STEPS]
  assert trained_numbers(baseline_copy) == trained_numbers(baseline)


# ---------------------------------------------------------------------------
# Faults: full disk, unwritable directory
# ---------------------------------------------------------------------------

def small_state(value):
  """400 KB that do not compress (zstd would shrink a constant array to nothing)."""
  weights = np.random.default_rng(value).standard_normal(100_000).astype(np.float32)
  return {"w": weights, "step": np.int32(value)}


@contextlib.contextmanager
def file_size_limit(limit):
  """Writes past `limit` bytes fail with EFBIG, as writes to a full disk fail."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def assert_step_intact(workdir, step):
  state, meta, restored = Checkpointer(str(workdir), read_only=True).restore(fallback=False)
  assert restored == step and meta == {"n": step}
  np.testing.assert_array_equal(state["w"], small_state(step)["w"])


def test_a_real_write_failure_keeps_earlier_checkpoints(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), keep=2)
  checkpointer.save(1, small_state(1), {"n": 1})
  before = tree_digest(tmp_path / "checkpoints" / "1")
  with file_size_limit(20_000), pytest.raises(CheckpointError) as caught:
    checkpointer.save(2, small_state(2), {"n": 2})
  message = str(caught.value)
  assert "could not save checkpoint 2" in message and "File too large (errno 27)" in message
  assert "Free disk space" in message and "the earlier checkpoints (1) are untouched" in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # no half-written step 2
  assert tree_digest(tmp_path / "checkpoints" / "1") == before
  assert_step_intact(tmp_path, 1)
  checkpointer.save(2, small_state(2), {"n": 2})  # once there is room again
  assert_step_intact(tmp_path, 2)


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device (errno 28)"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied (errno 13)"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system (errno 30)"),
    (ValueError("DATA_LOSS: Error writing \"w/0\": Failed to write 512 bytes to file 14: "
                "No space left on device [os_error_code='28']"),
     "No space left on device (errno 28)"),
])
def test_save_errors_wrapped_or_not_become_checkpoint_errors(tmp_path, monkeypatch, error,
                                                             reason):
  checkpointer = Checkpointer(str(tmp_path), keep=2)
  checkpointer.save(1, small_state(1), {"n": 1})

  def failing_save(step, *args, **kwargs):
    os.makedirs(tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp" / "state")
    raise RuntimeError("Orbax failed") from error

  monkeypatch.setattr(checkpointer.manager, "save", failing_save)
  with pytest.raises(CheckpointError, match=re.escape(
      f"could not save checkpoint 2 in '{tmp_path / 'checkpoints'}': {reason}. Free disk space "
      "or make the workdir writable")):
    checkpointer.save(2, small_state(2), {"n": 2})
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # the unfinished one is gone
  assert_step_intact(tmp_path, 1)


def test_checkpoint_path_that_is_a_file(tmp_path):
  (tmp_path / "checkpoints").write_text("not a directory")
  with pytest.raises(CheckpointError, match="is a file, not a checkpoint directory"):
    Checkpointer(str(tmp_path))


@pytest.mark.slow
def test_full_disk_during_training_is_a_clear_error(baseline, env, tmp_path):
  """The command line with writes over 64 KB refused: a save fails cleanly, the earlier
  checkpoints kept. Usually the first save; under load TensorStore may write smaller
  files, and the first then fits (CI, once): the failing save is read from the message."""
  del baseline  # trained first: the compilation cache holds every program, nothing is written
  cache = tmp_path / "cache"  # a private copy: refused writes must not touch the shared one
  shutil.copytree(env["JAX_COMPILATION_CACHE_DIR"], cache)
  # a launcher sets the limit, then becomes the command (no preexec_fn: JAX has threads)
  launcher = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit("
              "resource.RLIMIT_FSIZE, (64_000, resource.RLIM_INFINITY)); "
              "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"]
  workdir = tmp_path / "run"
  result = run(launcher + train_command(workdir)[1:],
               dict(env, JAX_COMPILATION_CACHE_DIR=str(cache)))
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
  first_save = TOTAL_STEPS // 12  # the end of epoch 1
  said = re.search(r"seq2seq-jax train: error: could not save checkpoint (\d+) in '.*': File too "
                   r"large \(errno 27\)\. Free disk space or make the workdir writable, then run "
                   r"the same command again to resume; (no earlier checkpoint existed|the earlier "
                   r"checkpoints \(([\d, ]+)\) are untouched)\.", result.stderr)
  assert said, result.stderr
  assert no_traceback(result.stderr), result.stderr
  step, kept = int(said[1]), said[3]
  assert step % first_save == 0 and (kept is None) == (step == first_save), result.stderr
  # the failed step is gone, the earlier ones are there
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == (kept.split(", ") if kept else [])


def test_unwritable_workdir_is_a_clear_error(tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  code, _, err = cli_in_process(capsys, "train", "--config", "configs/tiny.py",
                                "--workdir", str(tmp_path / "file" / "run"))
  assert code == 2 and err == (  # named before anything is tried (was "Not a directory")
      f"seq2seq-jax train: error: workdir '{tmp_path / 'file' / 'run'}' is under "
      f"'{tmp_path / 'file'}', a file, not a directory: give a path under a directory.\n"), err
