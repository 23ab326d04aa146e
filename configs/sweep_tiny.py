"""A sweep that runs in seconds on a CPU, for tests and smoke runs.

Two learning rates x two dropout rates of a configs/tiny.py-size model: the four trials
differ only in values that change no shape, so with vectorize=True they train together
as one jitted vmapped program.

  seq2seq-jax sweep --config configs/sweep_tiny.py --workdir runs/sweep_tiny
"""

from seq2seq_jax.config import Config


def get_config() -> Config:
  return Config(
      # Embedded English -> French number words.
      data="numbers:fr",
      # Seed for data, initialisation, shuffling and dropout (the same for every trial).
      seed=0,
      # Small numbers keep sequences short.
      numbers_max=999,
      # Training pairs.
      numbers_train=200,
      # Validation pairs.
      numbers_val=20,
      # Test pairs.
      numbers_test=20,
      # Learned character embeddings.
      input_mode="embed",
      # Embedding size.
      embed_dim=16,
      # LSTM hidden size.
      latent_dim=32,
      # One encoder and one decoder layer.
      num_layers=1,
      # No attention: the smallest program to compile.
      attention="none",
      # Pairs per batch.
      batch_size=32,
      # Two epochs: a best and a final validation, a checkpoint each.
      num_epochs=2,
      # Peak learning rate (swept).
      learning_rate=3e-3,
      # Warmup steps.
      warmup_steps=2,
      # Numbers up to 999 are at most 30 characters.
      max_source_len=40,
      # French number words up to 999 are at most 30 characters.
      max_target_len=40,
      # One batch shape: one compiled program, so the sweep takes seconds.
      bucket_width=0,
      # The checkpoint translate uses: the best by token accuracy.
      best_metric="val/token_accuracy",
      # Log often in tiny runs.
      log_every_steps=2,
      # Summary samples.
      num_summary_samples=2,
  )


def get_sweep() -> dict:
  return {
      # Every combination: 4 trials.
      "grid": {"learning_rate": [3e-3, 1e-2], "dropout": [0.0, 0.2]},
      # Tiny models translate no number exactly yet: rank by token accuracy.
      "metric": "val/token_accuracy",
      "mode": "max",
      # Learning rate and dropout change no shape: one vmapped program for all four.
      "vectorize": True,
  }
