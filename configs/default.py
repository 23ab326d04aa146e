"""The project's recommended settings for the embedded numbers:fr task.

English number words -> French number words up to 999,999, character level,
Luong attention with input feeding. About 15 minutes on 2 CPU cores.
"""

from seq2seq_jax.config import Config


def get_config() -> Config:
  return Config(
      # Embedded English -> French number words (num2words); no download.
      data="numbers:fr",
      # Seed for data, initialisation, shuffling and dropout.
      seed=0,
      # Numbers from 0 to 999,999.
      numbers_max=999_999,
      # Training pairs (distinct numbers).
      numbers_train=30_000,
      # Validation pairs, disjoint from training by number.
      numbers_val=1_000,
      # Test pairs, disjoint from both.
      numbers_test=2_000,
      # Digit count drawn uniformly, so short numbers are not drowned out.
      numbers_sampling="digits",
      # Longest English number word up to a million is 73 characters.
      max_source_len=80,
      # Longest French one is 71.
      max_target_len=80,
      # Batches hold similar lengths, padded to a multiple of 16.
      bucket_width=16,
      # Learned character embeddings.
      input_mode="embed",
      # Embedding size.
      embed_dim=64,
      # LSTM hidden size: 128 is enough for this task and twice as fast as 256 on a CPU.
      latent_dim=128,
      # One encoder and one decoder layer.
      num_layers=1,
      # No dropout: the task is deterministic and the data plentiful.
      dropout=0.0,
      # Attention makes the decoder read the source where it needs it.
      attention="general",
      # Feed the attentional vector back: the decoder knows what it has translated.
      input_feeding=True,
      # Attention makes reversal unnecessary.
      reverse_source=False,
      # Pairs per batch.
      batch_size=128,
      # Passes over the training data.
      num_epochs=6,
      # Peak learning rate.
      learning_rate=3e-3,
      # Warmup then cosine decay.
      lr_schedule="cosine",
      # Warmup steps.
      warmup_steps=200,
      # Keras RMSprop decay (rho).
      rmsprop_decay=0.9,
      # Keras RMSprop epsilon.
      rmsprop_eps=1e-7,
      # Epsilon inside the square root, as Keras 3.
      rmsprop_eps_in_sqrt=True,
      # Clip the global gradient norm.
      clip_norm=1.0,
      # The loss ignores padded target positions.
      loss_on_padding=False,
      # Validate every epoch.
      eval_every_epochs=1,
      # Greedy exact match on 500 validation sentences per epoch.
      eval_decode_samples=500,
      # Keep the two newest checkpoints, and the best by validation exact match.
      keep_checkpoints=2,
      # The best checkpoint is the one translate and evaluate use.
      best_metric="val/exact_match",
      # Log every 100 steps.
      log_every_steps=100,
  )
