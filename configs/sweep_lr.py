"""A learning-rate x seed sweep of the default model on numbers:fr, sized for a CPU.

The default model (configs/default.py: embeddings 64, LSTM 128, Luong attention with
input feeding, RMSprop with warmup and cosine decay, clipping 1.0) on a shorter job:
numbers up to 99,999, 12,000 training pairs, 3 epochs. 3 learning rates x 2 seeds =
6 trials; per seed, the 3 learning rates train together as one vmapped program (a seed
also draws the data, so different seeds are different programs).

  seq2seq-jax sweep --config configs/sweep_lr.py --workdir runs/sweep_lr
"""

from seq2seq_jax.config import Config


def get_config() -> Config:
  return Config(
      # Embedded English -> French number words (num2words); no download.
      data="numbers:fr",
      # Seed for data, initialisation, shuffling and dropout (swept).
      seed=0,
      # Numbers from 0 to 99,999: shorter sentences than the default job's.
      numbers_max=99_999,
      # Training pairs (distinct numbers).
      numbers_train=12_000,
      # Validation pairs, disjoint from training by number.
      numbers_val=500,
      # Test pairs, disjoint from both.
      numbers_test=1_000,
      # Digit count drawn uniformly, so short numbers are not drowned out.
      numbers_sampling="digits",
      # Longest English number word below 100,000 is under 60 characters.
      max_source_len=80,
      # And its French translation.
      max_target_len=80,
      # Batches hold similar lengths, padded to a multiple of 16.
      bucket_width=16,
      # Learned character embeddings.
      input_mode="embed",
      # Embedding size.
      embed_dim=64,
      # LSTM hidden size.
      latent_dim=128,
      # One encoder and one decoder layer.
      num_layers=1,
      # No dropout.
      dropout=0.0,
      # Luong attention with input feeding, as the default job.
      attention="general",
      # Feed the attentional vector back.
      input_feeding=True,
      # Pairs per batch.
      batch_size=128,
      # Passes over the training data.
      num_epochs=3,
      # Peak learning rate (swept).
      learning_rate=3e-3,
      # Warmup then cosine decay.
      lr_schedule="cosine",
      # Warmup steps: a fifth of this shorter job.
      warmup_steps=60,
      # Keras RMSprop decay (rho).
      rmsprop_decay=0.9,
      # Keras RMSprop epsilon, inside the square root.
      rmsprop_eps=1e-7,
      # Clip the global gradient norm.
      clip_norm=1.0,
      # Validate every epoch.
      eval_every_epochs=1,
      # Greedy exact match on every validation sentence.
      eval_decode_samples=500,
      # The best checkpoint by validation exact match.
      best_metric="val/exact_match",
      # Log every 25 steps.
      log_every_steps=25,
  )


def get_sweep() -> dict:
  return {
      # 3 peak learning rates x 2 seeds = 6 trials.
      "grid": {"learning_rate": [1e-3, 3e-3, 1e-2], "seed": [0, 1]},
      # Ranked by the best validation exact match over the epochs.
      "metric": "val/exact_match",
      "mode": "max",
      # Per seed, the learning rates share one jitted vmapped program.
      "vectorize": True,
  }
