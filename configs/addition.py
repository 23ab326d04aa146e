"""The "learning to add numbers" task with the RepeatVector encoder-decoder.

  seq2seq-jax train --config configs/addition.py --workdir runs/addition
  seq2seq-jax train --config configs/addition.py --set decoder_input=previous --workdir runs/addition_previous
"""

from seq2seq_jax.config import Config


def get_config() -> Config:
  return Config(
      # "53+7" -> "60", embedded and deterministic from the seed.
      data="addition",
      # Seed for data, initialisation, shuffling and dropout.
      seed=0,
      # Operands up to 99.
      addition_digits=2,
      # Training pairs (distinct sums).
      task_train=6_000,
      # Validation pairs.
      task_val=500,
      # Test pairs.
      task_test=1_000,
      # numbers:LANG data only, unused here (pinned: this config's saved values stay as they were).
      numbers_train=50_000,
      # "99+99" is 5 characters.
      max_source_len=5,
      # "198" is 3 characters; the repeat decoder emits max_target_len + 1 steps.
      max_target_len=3,
      # Sequences are short: one bucket.
      bucket_width=8,
      # Learned character embeddings.
      input_mode="embed",
      # Embedding size.
      embed_dim=32,
      # LSTM hidden size.
      latent_dim=128,
      # The decoder reads the encoder's final vector at every step (Brownlee's recipe).
      decoder_input="repeat",
      # RepeatVector models have no attention.
      attention="none",
      # Pairs per batch.
      batch_size=64,
      # Passes over the training data.
      num_epochs=40,
      # Peak learning rate.
      learning_rate=3e-3,
      # Warmup steps.
      warmup_steps=100,
      # Clip the global gradient norm.
      clip_norm=1.0,
      # Greedy exact match on every validation pair.
      eval_decode_samples=0,
      # Validate every 5 epochs.
      eval_every_epochs=5,
      # Save at each validation.
      checkpoint_every_epochs=5,
      # Log every 200 steps.
      log_every_steps=200,
  )
