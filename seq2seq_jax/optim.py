"""Optimizer construction: the only module that builds optax transforms."""

from __future__ import annotations

import dataclasses

import optax

from seq2seq_jax.config import Config


def learning_rate_schedule(config: Config, total_steps: int) -> optax.Schedule:
  """Constant, or linear warmup followed by cosine / linear decay to lr_end_fraction."""
  peak = config.learning_rate
  if config.lr_schedule == "constant":
    return optax.constant_schedule(peak)
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup, 1)
  end = peak * config.lr_end_fraction
  if config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.lr_end_fraction)
  else:
    decay = optax.linear_schedule(peak, end, decay_steps)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def build_optimizer(config: Config, total_steps: int) -> optax.GradientTransformation:
  """Optional global-norm clipping, then RMSprop with every setting explicit.

  Keras 3 RMSprop is rmsprop_eps=1e-7 with eps inside the square root, decay 0.9,
  no momentum, not centered; optax's own defaults differ (eps 1e-8), so nothing
  is left to a default here.
  """
  rmsprop = optax.rmsprop(
      learning_rate=learning_rate_schedule(config, total_steps),
      decay=config.rmsprop_decay,
      eps=config.rmsprop_eps,
      initial_scale=0.0,
      eps_in_sqrt=config.rmsprop_eps_in_sqrt,
      centered=config.rmsprop_centered,
      momentum=config.rmsprop_momentum or None,
      nesterov=False,
      bias_correction=False,
  )
  if config.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), rmsprop)
  return rmsprop


def build_optimizer_with(config: Config, total_steps: int, **hyperparams) -> optax.GradientTransformation:
  """build_optimizer with some of learning_rate, rmsprop_decay and clip_norm given as
  arrays (e.g. one trial's value inside jax.vmap); same transforms, same state layout.

  A given clip_norm must be positive: clipping or not changes the state layout.
  """
  unknown = set(hyperparams) - {"learning_rate", "rmsprop_decay", "clip_norm"}
  if unknown:
    raise ValueError(f"not an optimizer hyperparameter: {', '.join(sorted(unknown))}")
  clip_norm = hyperparams.pop("clip_norm", None)
  if clip_norm is None:
    return build_optimizer(dataclasses.replace(config, **hyperparams), total_steps)
  # build_optimizer's layout for clip_norm > 0, with the norm as a value instead of a constant
  rmsprop = build_optimizer(dataclasses.replace(config, clip_norm=0.0, **hyperparams), total_steps)
  return optax.chain(optax.clip_by_global_norm(clip_norm), rmsprop)
