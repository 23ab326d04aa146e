import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax import model as model_lib
from seq2seq_jax.decode import decode_texts, greedy_decode, make_greedy_decoder
from seq2seq_jax.vocab import END_ID, PAD_ID, START_ID, Vocab
from tests.conftest import tiny_config


def python_greedy(model, params, src, max_len):
  """Reference: one decode_step call per character, argmax in NumPy, stop at END."""
  carries, enc, mask = model.apply({"params": params}, src, method=model.encode)
  outputs = []
  for row in range(src.shape[0]):
    row_carries = [tuple(a[row:row + 1] for a in carry) for carry in carries]
    state = model.apply({"params": params}, row_carries, method=model.initial_decoder_state)
    prev, ids = jnp.array([START_ID]), []
    for _ in range(max_len):
      state, logits = model.apply({"params": params}, state, enc[row:row + 1],
                                        mask[row:row + 1], prev, method=model.decode_step)
      token = int(np.argmax(np.asarray(logits[0])))
      ids.append(token)
      if token == END_ID:
        break
      prev = jnp.array([token])
    outputs.append(ids + [PAD_ID] * (max_len - len(ids)))
  return np.array(outputs)


def _biased_params(model, params):
  """Random weights with END made likely, so rows end at different steps."""
  bias = params["output_dense"]["bias"].at[END_ID].set(1.5)
  return {**params, "output_dense": {**params["output_dense"], "bias": bias}}


@pytest.mark.parametrize("overrides", [
    dict(attention="general", num_layers=2), dict(attention="dot", input_feeding=False),
    dict(attention="none", input_mode="onehot"), dict(cell="gru", num_layers=2)])
def test_scan_decoder_equals_step_by_step_loop_and_stops_at_end(overrides):
  config = tiny_config(**overrides)
  model = model_lib.build_model(config, 12, 9)
  params = _biased_params(model, model_lib.init_params(model, jax.random.key(7)))
  src = jnp.array(np.random.default_rng(0).integers(4, 12, size=(6, 5)), jnp.int32)
  src = src.at[2, 3:].set(PAD_ID)
  got = np.asarray(make_greedy_decoder(model, 12)(params, src))
  want = python_greedy(model, params, src, 12)
  np.testing.assert_array_equal(got, want)
  ended = False
  for row in got:
    if END_ID in row.tolist():
      end = row.tolist().index(END_ID)
      assert (row[end + 1:] == PAD_ID).all()
      ended = True
  assert ended, "the biased model should end some rows before max_len"


def test_batched_decoding_does_not_depend_on_batch_or_padding():
  config = tiny_config()
  model = model_lib.build_model(config, 12, 9)
  params = _biased_params(model, model_lib.init_params(model, jax.random.key(8)))
  vocab = Vocab([chr(ord("a") + i) for i in range(5)])
  src = np.random.default_rng(1).integers(4, 12, size=(37, 9)).astype(np.int32)
  src[5, 4:] = PAD_ID
  decoder = make_greedy_decoder(model, 10)
  together = decode_texts(decoder, params, src, vocab, batch_size=64, bucket_width=8)
  alone = [decode_texts(decoder, params, src[i:i + 1, :4 if i == 5 else 9], vocab, batch_size=1)[0]
           for i in (0, 5, 36)]
  assert [together[i] for i in (0, 5, 36)] == alone


def test_repeat_decoding_is_one_pass_argmax_cut_at_end():
  config = tiny_config(decoder_input="repeat", attention="none", cell="gru")
  model = model_lib.build_model(config, 12, 9)
  params = _biased_params(model, model_lib.init_params(model, jax.random.key(9)))
  src = jnp.array(np.random.default_rng(2).integers(4, 12, size=(8, 6)), jnp.int32)
  got = np.asarray(make_greedy_decoder(model, 7)(params, src))
  argmax = np.asarray(jnp.argmax(model.apply({"params": params}, src, jnp.zeros((8, 7), jnp.int32)), -1))
  for row, want in zip(got, argmax):
    want = want.tolist()
    end = want.index(END_ID) + 1 if END_ID in want else len(want)
    assert row.tolist() == want[:end] + [PAD_ID] * (len(want) - end)
