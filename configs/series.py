"""Forecasting real-valued sequences with the RepeatVector encoder-decoder.

  python experiments/make_series_csv.py series.csv
  seq2seq-jax train --config configs/series.py --data series:series.csv --workdir runs/series
  seq2seq-jax evaluate --workdir runs/series      # MSE/MAE against the last-value baseline
"""

from seq2seq_jax.config import Config


def get_config() -> Config:
  return Config(
      # A CSV of numeric columns (a header row is optional); pass --data series:PATH.
      data="series:series.csv",
      # Seed for initialisation, shuffling and dropout.
      seed=0,
      # Rows 0-80% train, then 10% validation, 10% test, in time order.
      val_fraction=0.1,
      # Test fraction (the last rows).
      test_fraction=0.1,
      # Input window: 24 rows of every column.
      series_input_steps=24,
      # Forecast the next 6 rows.
      series_output_steps=6,
      # Forecast every column ("" = all; or names / 0-based indexes, comma-separated).
      series_targets="",
      # Real-valued inputs, linear output, mean-squared-error loss.
      input_mode="real",
      # The decoder reads the encoder's final vector at every output step.
      decoder_input="repeat",
      # No attention with a repeated vector.
      attention="none",
      # LSTM hidden size.
      latent_dim=64,
      # One layer each side.
      num_layers=1,
      # Windows all have the same length: no buckets.
      bucket_width=0,
      # Windows per batch.
      batch_size=64,
      # Passes over the training windows.
      num_epochs=30,
      # Peak learning rate.
      learning_rate=3e-3,
      # Warmup steps.
      warmup_steps=50,
      # Clip the global gradient norm.
      clip_norm=1.0,
      # Keep the checkpoint with the lowest validation MSE.
      best_metric="val/loss",
      # Validate every 5 epochs.
      eval_every_epochs=5,
      # Save at each validation.
      checkpoint_every_epochs=5,
      # Log every 100 steps.
      log_every_steps=100,
      # Forecasts printed at the end.
      num_summary_samples=3,
      # Text-data settings, unused by series:PATH (pinned: saved configs stay as they were).
      # Longest source kept.
      max_source_len=100,
      # Longest target kept.
      max_target_len=100,
      # Sentences decoded for exact match.
      eval_decode_samples=1000,
      # numbers:LANG training pairs.
      numbers_train=50_000,
  )
