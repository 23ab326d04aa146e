"""Seconds on a CPU: for tests and smoke runs."""

from seq2seq_jax.config import Config


def get_config() -> Config:
  return Config(
      # Embedded English -> French number words.
      data="numbers:fr",
      # Seed for data, initialisation, shuffling and dropout.
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
      # Luong attention.
      attention="general",
      # Pairs per batch.
      batch_size=32,
      # Two epochs: enough to exercise checkpoints and resume.
      num_epochs=2,
      # Peak learning rate.
      learning_rate=3e-3,
      # Warmup steps.
      warmup_steps=2,
      # Numbers up to 999 are at most 30 characters.
      max_source_len=40,
      # French number words up to 999 are at most 30 characters.
      max_target_len=40,
      # Length-bucket width.
      bucket_width=16,
      # Greedy exact match on up to 1,000 validation sentences: all 20.
      eval_decode_samples=1000,
      # Keep at least two checkpoints.
      keep_checkpoints=2,
      # Log often in tiny runs.
      log_every_steps=2,
      # Summary samples.
      num_summary_samples=3,
  )
