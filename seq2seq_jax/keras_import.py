"""Keras interop: the only module that imports keras.

`import_keras` turns a trained model of the Keras lstm_seq2seq example (one-hot LSTM
encoder, LSTM decoder seeded with [h, c], softmax Dense) into a seq2seq_jax workdir.
Our LSTM parameters already use Keras' layout, so weights copy over unchanged; only
the vocabulary positions move: the Keras file holds no vocabulary, so it is rebuilt
from the same data exactly as the example does, and "\\t" / "\\n" become START / END.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from typing import Any

import numpy as np

from seq2seq_jax import config as config_lib
from seq2seq_jax import data as data_lib
from seq2seq_jax.config import Config
from seq2seq_jax.errors import CheckpointError, UserError, first_line
from seq2seq_jax.vocab import END_ID, START_ID, Vocab

log = logging.getLogger(__name__)

NEG_INF = -1e9
KERAS_CONFIG = "keras_lstm_seq2seq"  # the shipped config (seq2seq_jax/configs/) of the example


def _keras():
  os.environ.setdefault("KERAS_BACKEND", "jax")
  try:
    import keras
  except ImportError as error:
    raise UserError("importing a Keras model needs keras: pip install keras") from error
  return keras


# what model.save() writes, by its first bytes: Keras 3's .keras is a zip archive, Keras 2's
# .h5 an HDF5 file; Keras reads each by its extension only
_KERAS_FILES = ((b"PK\x03\x04", (".keras",), "a Keras 3 .keras file (a zip archive)"),
                (b"\x89HDF\r\n\x1a\n", (".h5", ".hdf5"), "a Keras 2 .h5 file (HDF5)"))
_SAVE_HINT = "give the file that model.save('model.keras') (or Keras 2's model.save('model.h5')) wrote"


def load_keras_model(path: str):
  """A Keras 3 `.keras` file, or a Keras 2 `.h5` file (read by Keras 3's legacy loader)."""
  if os.path.isdir(path):
    raise CheckpointError(f"Keras model '{path}' is a directory (a TensorFlow SavedModel?), "
                          f"which Keras 3 cannot read: {_SAVE_HINT}.")
  if not os.path.isfile(path):
    raise CheckpointError(f"Keras model '{path}' does not exist.")
  with open(path, "rb") as f:
    head = f.read(8)
  kind = next((k for k in _KERAS_FILES if head.startswith(k[0])), None)
  if kind is None:
    raise CheckpointError(f"'{path}' is not a Keras model file (neither a zip archive nor "
                          f"HDF5): {_SAVE_HINT}.")
  _, extensions, what = kind
  if not path.endswith(extensions):
    raise CheckpointError(f"'{path}' is {what}, which Keras reads only under the extension "
                          f"{extensions[0]}: rename it.")
  if extensions == (".keras",) and not zipfile.is_zipfile(path):  # Keras says "File not found"
    raise CheckpointError(f"'{path}' is a damaged zip archive (cut short in a copy?): "
                          f"{_SAVE_HINT}.")
  keras = _keras()
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as error:  # a damaged file, or not a model: Keras' first line names why
    reason = first_line(error, type(error).__name__, limit=200)
    raise CheckpointError(f"Keras could not load '{path}' ({reason}); {_SAVE_HINT}.") from None


def example_weights(model) -> dict[str, dict[str, np.ndarray]]:
  """Encoder LSTM, decoder LSTM and Dense weights of the example's architecture."""
  keras = _keras()
  lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
  denses = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
  if len(lstms) != 2 or len(denses) != 1:
    raise CheckpointError(f"expected the lstm_seq2seq architecture (2 LSTM layers and 1 Dense); "
                          f"found {len(lstms)} LSTM and {len(denses)} Dense layers.")
  out = {}
  for name, layer in (("encoder", lstms[0]), ("decoder", lstms[1])):
    kernel, recurrent_kernel, bias = (np.asarray(w) for w in layer.get_weights())
    out[name] = {"kernel": kernel, "recurrent_kernel": recurrent_kernel, "bias": bias}
  kernel, bias = (np.asarray(w) for w in denses[0].get_weights())
  out["dense"] = {"kernel": kernel, "bias": bias}
  return out


def target_positions(tgt_chars: list[str], tgt_vocab: Vocab) -> np.ndarray:
  """Our id for each Keras target index ("\\t" -> START, "\\n" -> END)."""
  ids = {data_lib.KERAS_START: START_ID, data_lib.KERAS_END: END_ID}
  return np.array([ids.get(ch, tgt_vocab.encode(ch)[0]) for ch in tgt_chars])


def params_from_keras(weights: dict[str, dict[str, np.ndarray]], src_vocab: Vocab,
                      tgt_vocab: Vocab, src_chars: list[str], tgt_chars: list[str]) -> dict[str, Any]:
  """Our parameter tree: Keras rows/columns moved to our ids, unused ids silent."""
  for side, chars, rows in (("source", src_chars, weights["encoder"]["kernel"].shape[0]),
                            ("target", tgt_chars, weights["decoder"]["kernel"].shape[0])):
    if len(chars) != rows:
      raise CheckpointError(
          f"the {side} vocabulary rebuilt from the data has {len(chars)} characters but the "
          f"Keras model expects {rows}: pass the same data file and --num-samples as in training.")
  src_ids = np.array([src_vocab.encode(ch)[0] for ch in src_chars])
  tgt_ids = target_positions(tgt_chars, tgt_vocab)

  def scatter_rows(kernel, ids, size):
    out = np.zeros((size,) + kernel.shape[1:], np.float32)
    out[ids] = kernel
    return out

  encoder, decoder, dense = weights["encoder"], weights["decoder"], weights["dense"]
  dense_kernel = np.zeros((dense["kernel"].shape[0], len(tgt_vocab)), np.float32)
  dense_kernel[:, tgt_ids] = dense["kernel"]
  dense_bias = np.full(len(tgt_vocab), NEG_INF, np.float32)  # ids Keras never predicts
  dense_bias[tgt_ids] = dense["bias"]
  return {
      "encoder_lstm_0": {"kernel": scatter_rows(encoder["kernel"], src_ids, len(src_vocab)),
                         "recurrent_kernel": encoder["recurrent_kernel"].astype(np.float32),
                         "bias": encoder["bias"].astype(np.float32)},
      "decoder_lstm_0": {"kernel": scatter_rows(decoder["kernel"], tgt_ids, len(tgt_vocab)),
                         "recurrent_kernel": decoder["recurrent_kernel"].astype(np.float32),
                         "bias": decoder["bias"].astype(np.float32)},
      "output_dense": {"kernel": dense_kernel, "bias": dense_bias},
  }


def keras_from_params(params: dict[str, Any], src_vocab: Vocab, tgt_vocab: Vocab,
                      src_chars: list[str], tgt_chars: list[str]) -> dict[str, dict[str, np.ndarray]]:
  """The inverse of params_from_keras: our parameters in the Keras model's layout."""
  src_ids = np.array([src_vocab.encode(ch)[0] for ch in src_chars])
  tgt_ids = target_positions(tgt_chars, tgt_vocab)
  p = {k: {n: np.asarray(v) for n, v in layer.items()} for k, layer in params.items()}
  return {
      "encoder": dict(p["encoder_lstm_0"], kernel=p["encoder_lstm_0"]["kernel"][src_ids]),
      "decoder": dict(p["decoder_lstm_0"], kernel=p["decoder_lstm_0"]["kernel"][tgt_ids]),
      "dense": {"kernel": p["output_dense"]["kernel"][:, tgt_ids],
                "bias": p["output_dense"]["bias"][tgt_ids]},
  }


def keras_characters(pairs: list[data_lib.Pair]) -> tuple[list[str], list[str]]:
  """The example's input_characters and target_characters."""
  return (sorted({ch for s, _ in pairs for ch in s}),
          sorted({ch for _, t in pairs for ch in data_lib.KERAS_START + t + data_lib.KERAS_END}))


def import_config(data: str, num_samples: int, latent_dim: int) -> Config:
  """configs/keras_lstm_seq2seq.py with the model's data, sample count and size."""
  base = config_lib.load_config_file(config_lib.shipped_config_path(KERAS_CONFIG))
  return config_lib.validate(dataclasses.replace(
      base, data=data, num_samples=num_samples, latent_dim=latent_dim))


def import_keras(model_path: str, data: str, num_samples: int, workdir: str) -> int:
  """Writes workdir with a checkpoint (step 0) of the Keras model; returns its step."""
  from seq2seq_jax.checkpoint import Checkpointer
  from seq2seq_jax.optim import build_optimizer
  from seq2seq_jax import workdir as workdir_lib
  from seq2seq_jax.inference import load_run_data

  workdir_lib.check_run_directory(workdir)
  weights = example_weights(load_keras_model(model_path))
  latent_dim = weights["encoder"]["recurrent_kernel"].shape[0]
  config = import_config(data, num_samples, latent_dim)
  translator, train, val, test = load_run_data(config)
  if len(train) + len(val) + len(test) < num_samples:
    log.warning("warning: %s holds %d pairs, fewer than --num-samples %d: all were read, as "
                "the Keras example reads them. The import computes what the Keras model does "
                "only if it was trained on these very pairs: their longest source and target "
                "set the example's padding.", data, len(train) + len(val) + len(test),
                num_samples)
  src_chars, tgt_chars = keras_characters(train + val + test)
  params = params_from_keras(weights, translator.src_vocab, translator.tgt_vocab, src_chars, tgt_chars)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  if checkpointer.latest_step() is not None:
    raise CheckpointError(f"workdir '{workdir}' already holds checkpoints; import into a new one.")
  import jax.numpy as jnp
  params = {k: {n: jnp.asarray(v) for n, v in layer.items()} for k, layer in params.items()}
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": build_optimizer(config, 1).init(params)}
  meta = translator.checkpoint_meta(imported_from=os.path.abspath(model_path)).to_json()
  checkpointer.save(0, state, meta)
  checkpointer.close()
  workdir_lib.write_config(workdir, config)
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.RUN_FILE),
                         {"imported_from": os.path.abspath(model_path),
                          "keras_dims": translator.keras_dims})
  return 0


# ---------------------------------------------------------------------------
# The Keras example itself, for side-by-side runs and parity tests
# ---------------------------------------------------------------------------

def example_arrays(pairs: list[data_lib.Pair], src_chars: list[str], tgt_chars: list[str],
                   dims: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """encoder_input_data, decoder_input_data, decoder_target_data as the example builds them."""
  src_index = {ch: i for i, ch in enumerate(src_chars)}
  tgt_index = {ch: i for i, ch in enumerate(tgt_chars)}
  n, enc_len, dec_len = len(pairs), dims["max_encoder_seq_length"], dims["max_decoder_seq_length"]
  encoder_input = np.zeros((n, enc_len, len(src_chars)), np.float32)
  decoder_input = np.zeros((n, dec_len, len(tgt_chars)), np.float32)
  decoder_target = np.zeros((n, dec_len, len(tgt_chars)), np.float32)
  for i, (source, target) in enumerate(pairs):
    for t, ch in enumerate(source):
      encoder_input[i, t, src_index[ch]] = 1.0
    encoder_input[i, len(source):, src_index[" "]] = 1.0
    wrapped = data_lib.KERAS_START + target + data_lib.KERAS_END
    for t, ch in enumerate(wrapped):
      decoder_input[i, t, tgt_index[ch]] = 1.0
      if t > 0:
        decoder_target[i, t - 1, tgt_index[ch]] = 1.0
    decoder_input[i, len(wrapped):, tgt_index[" "]] = 1.0
    decoder_target[i, len(wrapped) - 1:, tgt_index[" "]] = 1.0
  return encoder_input, decoder_input, decoder_target


def build_example_model(num_encoder_tokens: int, num_decoder_tokens: int, latent_dim: int,
                        seed: int = 0):
  """The example's training model, compiled with optimizer="rmsprop" as published."""
  keras = _keras()
  keras.utils.set_random_seed(seed)
  encoder_inputs = keras.Input(shape=(None, num_encoder_tokens))
  _, state_h, state_c = keras.layers.LSTM(latent_dim, return_state=True)(encoder_inputs)
  decoder_inputs = keras.Input(shape=(None, num_decoder_tokens))
  decoder_outputs, _, _ = keras.layers.LSTM(latent_dim, return_sequences=True, return_state=True)(
      decoder_inputs, initial_state=[state_h, state_c])
  outputs = keras.layers.Dense(num_decoder_tokens, activation="softmax")(decoder_outputs)
  model = keras.Model([encoder_inputs, decoder_inputs], outputs)
  model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
  return model


def example_decoder(model, tgt_chars: list[str], max_decoder_seq_length: int,
                    predict: str = "predict_on_batch"):
  """The example's inference models and decode_sequence (argmax, one step at a time):
  returns decode(input_seq_1xSxV) -> the decoded text without its end marker.

  predict="predict" calls Model.predict as the published example does;
  "predict_on_batch" (default) skips predict()'s per-call data-adapter overhead."""
  keras = _keras()
  lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][0]
  encoder_model = keras.Model(model.input[0], lstms[0].output[1:])
  latent_dim = lstms[1].units
  state_h, state_c = keras.Input(shape=(latent_dim,)), keras.Input(shape=(latent_dim,))
  decoder_outputs, h, c = lstms[1](model.input[1], initial_state=[state_h, state_c])
  decoder_model = keras.Model([model.input[1], state_h, state_c],
                              [dense(decoder_outputs), h, c])
  start = tgt_chars.index(data_lib.KERAS_START)
  if predict == "predict":
    run_encoder = lambda x: encoder_model.predict(x, verbose=0)
    run_decoder = lambda xs: decoder_model.predict(xs, verbose=0)
  else:
    run_encoder, run_decoder = encoder_model.predict_on_batch, decoder_model.predict_on_batch

  def decode_sequence(input_seq: np.ndarray) -> str:
    states = [np.asarray(s) for s in run_encoder(input_seq)]
    target_seq = np.zeros((1, 1, len(tgt_chars)), np.float32)
    target_seq[0, 0, start] = 1.0
    decoded = ""
    while True:
      output_tokens, h, c = run_decoder([target_seq] + states)
      index = int(np.argmax(np.asarray(output_tokens)[0, -1, :]))
      decoded += tgt_chars[index]
      if tgt_chars[index] == data_lib.KERAS_END or len(decoded) > max_decoder_seq_length:
        break
      target_seq = np.zeros((1, 1, len(tgt_chars)), np.float32)
      target_seq[0, 0, index] = 1.0
      states = [np.asarray(h), np.asarray(c)]
    return decoded[:-1] if decoded.endswith(data_lib.KERAS_END) else decoded

  return decode_sequence
