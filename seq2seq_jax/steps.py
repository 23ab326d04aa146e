"""The pure steps under jit: loss, train step, eval step and state creation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from seq2seq_jax.config import Config
from seq2seq_jax.decode import first_argmax
from seq2seq_jax.model import Seq2Seq, init_params, with_scan_lstm
from seq2seq_jax.optim import build_optimizer_with

def loss_and_counts(params, batch, *, model: Seq2Seq, config: Config, train: bool,
                    dropout_rng=None, dropout_rate=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over target tokens (padding excluded unless loss_on_padding);
  for real-valued targets (series), mean squared error over the real rows.
  dropout_rate: None (the model's own), or a value that may be traced."""
  rngs = {"dropout": dropout_rng} if train and dropout_rng is not None else None
  logits_BxTxV = model.apply({"params": params}, batch["src"], batch["tgt_in"],
                             train=train, dropout_rate=dropout_rate, rngs=rngs)
  if config.input_mode == "real":
    row_B = (batch["index"] >= 0).astype(jnp.float32)
    error_BxTxF = logits_BxTxV - batch["tgt_out"]
    weight = jnp.sum(row_B) * error_BxTxF.shape[1] * error_BxTxF.shape[2]
    loss_sum = jnp.sum(jnp.square(error_BxTxF) * row_B[:, None, None])
    counts = {"loss_sum": loss_sum, "weight": weight, "correct": jnp.zeros(()),
              "tokens": weight}
    return loss_sum / jnp.maximum(weight, 1.0), counts
  targets_BxT = batch["tgt_out"]
  if config.label_smoothing:  # the reported loss is then the smoothed cross-entropy
    smoothed_BxTxV = optax.smooth_labels(jax.nn.one_hot(targets_BxT, logits_BxTxV.shape[-1]),
                                         config.label_smoothing)
    losses_BxT = optax.softmax_cross_entropy(logits_BxTxV, smoothed_BxTxV)
  else:
    losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  token_mask_BxT = batch["tgt_mask"]
  if config.loss_on_padding:  # Keras example: every position of a real row counts
    weight_BxT = jnp.broadcast_to((batch["index"] >= 0)[:, None], targets_BxT.shape)
  else:
    weight_BxT = token_mask_BxT
  weight_BxT = weight_BxT.astype(jnp.float32)
  loss_sum = jnp.sum(losses_BxT * weight_BxT)
  weight = jnp.sum(weight_BxT)
  correct_BxT = (first_argmax(logits_BxTxV) == targets_BxT) & token_mask_BxT
  counts = {
      "loss_sum": loss_sum,
      "weight": weight,
      "correct": jnp.sum(correct_BxT.astype(jnp.float32)),
      "tokens": jnp.sum(token_mask_BxT.astype(jnp.float32)),
  }
  return loss_sum / jnp.maximum(weight, 1.0), counts


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], base_rng: jax.Array, *,
               model: Seq2Seq, tx: optax.GradientTransformation, config: Config,
               dropout_rate=None) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One teacher-forced RMSprop step. state: {"step", "params", "opt_state"};
  dropout_rate: None (the model's own) or a traced value (vectorised sweeps)."""
  dropout_rng = jax.random.fold_in(base_rng, state["step"])

  def loss_sum(params):
    _, counts = loss_and_counts(params, batch, model=model, config=config, train=True,
                                dropout_rng=dropout_rng, dropout_rate=dropout_rate)
    return counts["loss_sum"], counts

  # the gradient of the summed loss, divided by the batch's weight afterwards: the same
  # mean gradient, and under data parallelism the weight is summed over the devices
  # together with the gradients (one all-reduce per step, not two)
  (_, counts), grads = jax.value_and_grad(loss_sum, has_aux=True)(state["params"])
  scale = 1.0 / jnp.maximum(counts["weight"], 1.0)
  loss = counts["loss_sum"] * scale
  grads = jax.tree.map(lambda g: g * scale, grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = dict(counts, loss=loss, grad_norm=optax.tree.norm(grads))
  return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


def eval_step(params, batch, *, model: Seq2Seq, config: Config) -> dict[str, jax.Array]:
  _, counts = loss_and_counts(params, batch, model=model, config=config, train=False)
  return counts


def create_state(config: Config, model: Seq2Seq, tx: optax.GradientTransformation) -> dict[str, Any]:
  """Initial {"step", "params", "opt_state"}; jitted: one program instead of many
  op-by-op dispatches (seconds on a CPU), the same numbers."""

  def init():
    params = init_params(model, jax.random.fold_in(jax.random.key(config.seed), 1))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  return jax.jit(init)()


def trial_train_step(state: dict[str, Any], batch: dict[str, jax.Array], base_rng: jax.Array,
                     hyper: dict[str, jax.Array], *, model: Seq2Seq,
                     tx: optax.GradientTransformation, config: Config,
                     ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """train_step for a group of one trial: metrics get the leading trial axis (hyper unused)."""
  del hyper
  state, metrics = train_step(state, batch, base_rng, model=model, tx=tx, config=config)
  return state, jax.tree.map(lambda x: x[None], metrics)


def vectorized_train_step(states_N: dict[str, Any], batch: dict[str, jax.Array],
                          base_rng: jax.Array, hyper_N: dict[str, jax.Array], *,
                          model: Seq2Seq, config: Config, total_steps: int,
                          ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """train_step for N trials at once under vmap; hyper_N: one value per trial of each
  varied optimizer setting (learning_rate, rmsprop_decay, clip_norm), of `dropout`, and
  `active` (False: the trial's state stays as it is). The LSTM layers run the scan: cuDNN's primitive (lstm_impl auto/cudnn on a GPU) has no
  batching rule."""
  model = with_scan_lstm(model)

  def one_trial(state, hyper):
    optimizer_values = {k: v for k, v in hyper.items() if k not in ("dropout", "active")}
    tx = build_optimizer_with(config, total_steps, **optimizer_values)
    new_state, metrics = train_step(state, batch, base_rng, model=model, tx=tx, config=config,
                                    dropout_rate=hyper.get("dropout"))
    if "active" in hyper:  # a stopped trial (pruned, diverged) keeps its state, same program
      new_state = jax.tree.map(lambda new, old: jnp.where(hyper["active"], new, old),
                               new_state, state)
    return new_state, metrics

  return jax.vmap(one_trial)(states_N, hyper_N)
