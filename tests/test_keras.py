"""Keras parity: the example's model, imported, computes and decodes exactly as in Keras."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

from seq2seq_jax import keras_import as ki  # noqa: E402
from seq2seq_jax.errors import CheckpointError  # noqa: E402
from seq2seq_jax.inference import load_run_data, load_trained  # noqa: E402
from seq2seq_jax.steps import train_step  # noqa: E402
from seq2seq_jax import data as data_lib  # noqa: E402
from seq2seq_jax.optim import build_optimizer  # noqa: E402
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
