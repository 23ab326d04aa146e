"""Keras parity: the example's model, imported, computes and decodes exactly as in Keras."""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

from seq2seq_jax import keras_import as ki  # noqa: E402
from seq2seq_jax.errors import CheckpointError, UserError  # noqa: E402
from seq2seq_jax.inference import load_run_data, load_trained  # noqa: E402
from seq2seq_jax.steps import train_step  # noqa: E402
from seq2seq_jax import data as data_lib  # noqa: E402
from seq2seq_jax.optim import build_optimizer  # noqa: E402
from seq2seq_jax.vocab import UNK_ID  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def anki_file(tmp_path_factory):
  """A small fra.txt-style file: English<TAB>French<TAB>attribution."""
  from num2words import num2words
  path = tmp_path_factory.mktemp("anki") / "fra.txt"
  rng = np.random.default_rng(0)
  numbers = rng.choice(2000, size=300, replace=False)
  with open(path, "w", encoding="utf-8") as f:
    for n in numbers.tolist():
      f.write(f"{num2words(n)}.\t{num2words(n, lang='fr')} !\tCC-BY 2.0 (France) #{n}\n")
  return str(path)


def _setup(anki_file, num_samples=300, latent=16, seed=0):
  config = ki.import_config(f"anki:{anki_file}", num_samples, latent)
  translator, train, val, test = load_run_data(config)
  pairs = train + val + test
  src_chars, tgt_chars = ki.keras_characters(pairs)
  model = ki.build_example_model(len(src_chars), len(tgt_chars), latent, seed=seed)
  return config, translator, pairs, src_chars, tgt_chars, model


def test_same_weights_give_the_same_outputs(anki_file):
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file)
  params = ki.params_from_keras(ki.example_weights(model), translator.src_vocab, translator.tgt_vocab,
                                src_chars, tgt_chars)
  batch_pairs = pairs[:16]
  enc, dec, _ = ki.example_arrays(batch_pairs, src_chars, tgt_chars, translator.keras_dims)
  keras_probs = np.asarray(model([enc, dec]))
  batch = data_lib.make_batch(translator.encode(batch_pairs), np.arange(16), 16, 0)
  logits = translator.model.apply({"params": params}, batch["src"], batch["tgt_in"])
  ours = np.asarray(jax.nn.softmax(logits, -1))[:, :, ki.target_positions(tgt_chars, translator.tgt_vocab)]
  assert ours.shape == keras_probs.shape
  np.testing.assert_allclose(ours, keras_probs, atol=1e-5)
  np.testing.assert_allclose(np.log(ours), np.log(keras_probs), atol=1e-4)


@pytest.mark.slow
def test_one_rmsprop_step_gives_the_same_parameters(anki_file):
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file)
  params = ki.params_from_keras(ki.example_weights(model), translator.src_vocab, translator.tgt_vocab,
                                src_chars, tgt_chars)
  batch_pairs = pairs[:64]
  enc, dec, target = ki.example_arrays(batch_pairs, src_chars, tgt_chars, translator.keras_dims)
  model.train_on_batch([enc, dec], target)
  tx = build_optimizer(config, 10)
  params = jax.tree.map(jnp.asarray, params)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  batch = data_lib.make_batch(translator.encode(batch_pairs), np.arange(64), 64, 0)
  state, metrics = train_step(state, batch, jax.random.key(0), model=translator.model, tx=tx,
                              config=config)
  ours = ki.keras_from_params(state["params"], translator.src_vocab, translator.tgt_vocab, src_chars, tgt_chars)
  theirs = ki.example_weights(model)
  for layer in ("encoder", "decoder", "dense"):
    for name in theirs[layer]:
      np.testing.assert_allclose(ours[layer][name], theirs[layer][name], atol=1e-6,
                                 err_msg=f"{layer}/{name}")


@pytest.mark.slow
def test_imported_model_decodes_exactly_as_keras(anki_file, tmp_path):
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file, latent=64)
  enc, dec, target = ki.example_arrays(pairs, src_chars, tgt_chars, translator.keras_dims)
  model.fit([enc, dec], target, batch_size=64, epochs=30, validation_split=0.2, verbose=0)
  model_path = str(tmp_path / "s2s_model.keras")
  model.save(model_path)
  workdir = str(tmp_path / "imported")
  result = run_cli("import-keras", model_path, "--data", f"anki:{anki_file}",
                   "--num-samples", "300", "--workdir", workdir)
  assert result.returncode == 0, result.stderr
  sentences = [s for s, _ in pairs[:50]]
  decode_sequence = ki.example_decoder(model, tgt_chars, translator.keras_dims["max_decoder_seq_length"])
  expected = [decode_sequence(enc[i:i + 1]) for i in range(50)]
  assert len(set(expected)) >= 3  # a model that says something, not one constant string
  restored, params, _ = load_trained(workdir)
  assert restored.translate(params, sentences) == expected
  cli = run_cli("translate", "--workdir", workdir, input_text="\n".join(sentences[:5]) + "\n")
  assert cli.stdout.split("\n")[:5] == expected[:5]
  # the example's encoder reads max_encoder_seq_length characters: a longer input is cut
  # there, and said so (the config's max_source_len is the import's 1000)
  width = translator.keras_dims["max_encoder_seq_length"]
  long = " ".join(sentences[:2]) + " " + "a" * width
  assert restored.input_warnings([long]) == [
      f"1 input(s) longer than max_source_len={width} characters were truncated"]


@pytest.mark.slow
def test_vocabulary_mismatch_names_both_sizes(anki_file, tmp_path):
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file)
  model_path = str(tmp_path / "m.keras")
  model.save(model_path)
  result = run_cli("import-keras", model_path, "--data", f"anki:{anki_file}",
                   "--num-samples", "20", "--workdir", str(tmp_path / "w"))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert f"Keras model expects {len(src_chars)}" in result.stderr


def test_legacy_h5_file_imports(anki_file, tmp_path):
  """The HDF5 format of Keras 2's `s2s.h5` (written here by Keras 3's legacy saver)."""
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file, seed=3)
  model_path = str(tmp_path / "s2s.h5")
  model.save(model_path)
  ki.import_keras(model_path, f"anki:{anki_file}", 300, str(tmp_path / "h5"))
  restored, params, _ = load_trained(str(tmp_path / "h5"))
  decode_sequence = ki.example_decoder(model, tgt_chars, translator.keras_dims["max_decoder_seq_length"])
  enc, _, _ = ki.example_arrays(pairs[:3], src_chars, tgt_chars, translator.keras_dims)
  assert restored.translate(params, [s for s, _ in pairs[:3]]) == [
      decode_sequence(enc[i:i + 1]) for i in range(3)]


def test_a_file_that_is_not_a_keras_model_is_named_in_one_line(tmp_path):
  """What import-keras is given instead of model.save()'s file: each refusal says what the
  file is and what to give, before Keras' own (misleading) messages."""
  notes = tmp_path / "notes.txt"
  notes.write_text("not a model\n")
  saved_model = tmp_path / "saved_model"
  saved_model.mkdir()
  renamed = tmp_path / "model.zip"
  renamed.write_bytes(b"PK\x03\x04" + b"\0" * 40)
  truncated = tmp_path / "cut.keras"
  truncated.write_bytes(b"PK\x03\x04" + b"\0" * 40)
  h5_junk = tmp_path / "junk.h5"
  h5_junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
  hint = "give the file that model.save('model.keras')"
  for path, message in ((notes, "is not a Keras model file (neither a zip archive nor HDF5)"),
                        (saved_model, "is a directory (a TensorFlow SavedModel?)"),
                        (renamed, "which Keras reads only under the extension .keras: rename"),
                        (truncated, "is a damaged zip archive"),
                        (h5_junk, "Keras could not load")):  # then Keras' first line
    with pytest.raises(CheckpointError) as caught:
      ki.load_keras_model(str(path))
    text = str(caught.value)
    assert message in text and "\n" not in text and len(text) < 400, text
    assert path is renamed or hint in text


def test_keras_runs_on_the_jax_backend_unless_the_user_chose_one(monkeypatch):
  """Keras' own default backend is TensorFlow, which seq2seq_jax does not install: the
  import picks JAX, and keeps a KERAS_BACKEND the user set."""
  monkeypatch.delenv("KERAS_BACKEND", raising=False)
  ki._keras()
  assert os.environ["KERAS_BACKEND"] == "jax"
  monkeypatch.setenv("KERAS_BACKEND", "torch")
  ki._keras()
  assert os.environ["KERAS_BACKEND"] == "torch"


def test_missing_keras_is_named_with_its_install_command(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` raises ImportError
  with pytest.raises(UserError, match=r"needs keras: pip install keras"):
    ki._keras()


def test_a_missing_model_file_is_named(tmp_path):
  missing = tmp_path / "s2s.keras"
  with pytest.raises(CheckpointError, match=r"Keras model '.*s2s\.keras' does not exist\."):
    ki.load_keras_model(str(missing))


def test_an_hdf5_file_is_read_as_h5_or_hdf5_and_named_under_another_extension(tmp_path):
  """Keras 2's HDF5 file loads under .h5 and .hdf5 (Keras' own rule); under another name it
  is refused with the extension to give it."""
  hdf5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 40
  (tmp_path / "junk.hdf5").write_bytes(hdf5)
  with pytest.raises(CheckpointError, match="Keras could not load"):  # Keras was asked
    ki.load_keras_model(str(tmp_path / "junk.hdf5"))
  (tmp_path / "s2s.keras").write_bytes(hdf5)
  with pytest.raises(CheckpointError) as caught:
    ki.load_keras_model(str(tmp_path / "s2s.keras"))
  assert "is a Keras 2 .h5 file (HDF5), which Keras reads only under the extension .h5: rename it." \
      in str(caught.value)


def test_keras_own_reason_is_quoted_in_one_short_line(monkeypatch, tmp_path):
  """Keras' message (a long, multi-line one here) is cut to its first line, at most 200
  characters of it, between what failed and what to give."""
  class Models:
    @staticmethod
    def load_model(path, compile):
      raise ValueError("x" * 1000 + "\nsecond line")
  monkeypatch.setattr(ki, "_keras", lambda: type("keras", (), {"models": Models}))
  import zipfile
  path = tmp_path / "s2s.keras"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("config.json", "{}")
  with pytest.raises(CheckpointError) as caught:
    ki.load_keras_model(str(path))
  text = str(caught.value)
  assert f"({'x' * 200}); give the file that model.save('model.keras')" in text
  assert "second line" not in text and "\n" not in text


def test_a_model_of_another_architecture_is_refused_with_its_layer_counts():
  """Only the example's model (2 LSTM layers and 1 Dense) maps onto ours."""
  def model(lstms: int, denses: int):
    x = inputs = keras.Input(shape=(None, 5))
    for _ in range(lstms):
      x = keras.layers.LSTM(4, return_sequences=True)(x)
    for _ in range(denses):
      x = keras.layers.Dense(5)(x)
    return keras.Model(inputs, x)
  for lstms, denses in ((1, 1), (3, 1), (2, 2), (2, 0)):
    with pytest.raises(CheckpointError) as caught:
      ki.example_weights(model(lstms, denses))
    assert f"found {lstms} LSTM and {denses} Dense layers" in str(caught.value)


def test_vocabulary_rebuilt_from_other_data_names_the_side_and_both_sizes(anki_file):
  """Other data (or another --num-samples) than in training rebuilds other vocabularies:
  refused, naming which side and both sizes, whether the data has fewer characters or more."""
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file)
  weights = ki.example_weights(model)
  args = translator.src_vocab, translator.tgt_vocab
  for chars, side, n, rows in (
      ((src_chars[:-1], tgt_chars), "source", len(src_chars) - 1, len(src_chars)),
      ((src_chars, tgt_chars + ["~"]), "target", len(tgt_chars) + 1, len(tgt_chars))):
    with pytest.raises(CheckpointError) as caught:
      ki.params_from_keras(weights, *args, *chars)
    assert (f"the {side} vocabulary rebuilt from the data has {n} characters but the Keras "
            f"model expects {rows}: pass the same data file and --num-samples") in str(caught.value)


def test_characters_are_the_examples_sorted_lists():
  """input_characters and target_characters as the example builds them: sorted, "\\t" and
  "\\n" among the targets; their order is the Keras model's row order."""
  pairs = [("ba c", "zy"), ("a!", "x y")]
  assert ki.keras_characters(pairs) == ([" ", "!", "a", "b", "c"], ["\t", "\n", " ", "x", "y", "z"])


def test_ids_keras_never_saw_are_silent(anki_file):
  """The ids of ours that the Keras model has no row for: never predicted, even where every
  Keras logit is far below zero (a softmax shifted by -100 is the same model), and
  unknown characters read as the example's all-zero one-hot rows."""
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file, seed=1)
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][0]
  kernel, bias = dense.get_weights()
  dense.set_weights([kernel, bias - 100.0])
  params = ki.params_from_keras(ki.example_weights(model), translator.src_vocab, translator.tgt_vocab,
                                src_chars, tgt_chars)
  batch_pairs = pairs[:8]
  enc, dec, _ = ki.example_arrays(batch_pairs, src_chars, tgt_chars, translator.keras_dims)
  batch = data_lib.make_batch(translator.encode(batch_pairs), np.arange(8), 8, 0)
  enc[:, 1:, :] = 0.0  # all characters but the first: ones the data never had
  batch["src"][:, 1:] = UNK_ID
  keras_probs = np.asarray(model([enc, dec]))
  logits = translator.model.apply({"params": params}, batch["src"], batch["tgt_in"])
  ours = np.asarray(jax.nn.softmax(logits, -1))[:, :, ki.target_positions(tgt_chars, translator.tgt_vocab)]
  np.testing.assert_allclose(ours, keras_probs, atol=1e-5)


def test_import_records_its_source_warns_of_too_few_pairs_and_refuses_a_used_workdir(
    anki_file, tmp_path, monkeypatch, caplog):
  """import-keras: a --num-samples above the file's pairs reads all of them, with a warning;
  run.json names the model file (its absolute path) and the example's padded lengths; a
  second import into the same workdir is refused, and a workdir that is a file is named."""
  config, translator, pairs, src_chars, tgt_chars, model = _setup(anki_file, seed=2)
  monkeypatch.chdir(tmp_path)
  model.save("s2s.keras")
  with caplog.at_level("WARNING", logger="seq2seq_jax"):
    assert ki.import_keras("s2s.keras", f"anki:{anki_file}", 1000, "w") == 0
  assert "holds 300 pairs, fewer than --num-samples 1000" in caplog.text
  run = json.loads((tmp_path / "w" / "run.json").read_text())
  assert run == {"imported_from": str(tmp_path / "s2s.keras"), "keras_dims": translator.keras_dims}
  caplog.clear()
  with caplog.at_level("WARNING", logger="seq2seq_jax"):
    ki.import_keras("s2s.keras", f"anki:{anki_file}", 300, "w2")
  assert "fewer than --num-samples" not in caplog.text  # all 300 pairs asked for
  with pytest.raises(CheckpointError, match="workdir 'w' already holds checkpoints; import into a new one"):
    ki.import_keras("s2s.keras", f"anki:{anki_file}", 300, "w")
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match="workdir 'file' is a file, not a directory"):
    ki.import_keras("missing.keras", f"anki:{anki_file}", 300, "file")


def test_the_examples_decode_loop_stops_at_its_end_marker_or_its_length():
  """example_decoder, the reference the parity tests compare with: the text before "\\n"
  without it, or max_decoder_seq_length + 1 characters where "\\n" never comes."""
  tgt_chars = ["\t", "\n", "a", "b"]
  model = ki.build_example_model(3, len(tgt_chars), 4)
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][0]
  kernel, _ = dense.get_weights()
  source = np.eye(3, dtype=np.float32)[None, [0, 1, 2]]
  for winner, expected in ((1, ""), (2, "aaaaaa")):
    dense.set_weights([np.zeros_like(kernel), 10.0 * (np.arange(4) == winner)])
    assert ki.example_decoder(model, tgt_chars, 5)(source) == expected
