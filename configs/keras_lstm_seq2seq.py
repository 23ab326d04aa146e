"""The Keras lstm_seq2seq example's settings (keras-io examples/nlp/lstm_seq2seq.py).

Train it on manythings.org's fra.txt:
  seq2seq-jax train --config configs/keras_lstm_seq2seq.py --data anki:fra.txt
"""

from seq2seq_jax.config import Config


def get_config() -> Config:
  return Config(
      # The example reads fra.txt; pass --data anki:PATH/fra.txt.
      data="anki:fra.txt",
      # Any seed: Keras' run is not seeded.
      seed=0,
      # num_samples = 10000: the first 10,000 pairs of the file.
      num_samples=10_000,
      # validation_split=0.2 takes the last 20% of the arrays.
      val_fraction=0.2,
      # The example keeps no test split.
      test_fraction=0.0,
      # Keras' validation_split is the tail of the data, unshuffled.
      split_mode="last",
      # The example's encoding: vocabularies of all pairs, "\t"/"\n" markers, space padding.
      keras_compat=True,
      # The example drops nothing: allow every length of the first 10,000 pairs.
      max_source_len=1000,
      # The example drops nothing.
      max_target_len=1000,
      # Every batch padded to the data set's maximum lengths, as the example's arrays.
      bucket_width=0,
      # One-hot encoder and decoder inputs.
      input_mode="onehot",
      # latent_dim = 256.
      latent_dim=256,
      # One LSTM layer each side.
      num_layers=1,
      # No dropout.
      dropout=0.0,
      # No source reversal.
      reverse_source=False,
      # No attention: the decoder sees only the encoder's final [h, c].
      attention="none",
      # batch_size = 64.
      batch_size=64,
      # epochs = 100.
      num_epochs=100,
      # Keras 3 RMSprop defaults: learning_rate=0.001 ...
      learning_rate=1e-3,
      # ... held constant ...
      lr_schedule="constant",
      # ... rho=0.9 ...
      rmsprop_decay=0.9,
      # ... epsilon=1e-7 ...
      rmsprop_eps=1e-7,
      # ... inside the square root ...
      rmsprop_eps_in_sqrt=True,
      # ... momentum=0.0 ...
      rmsprop_momentum=0.0,
      # ... centered=False.
      rmsprop_centered=False,
      # No gradient clipping.
      clip_norm=0.0,
      # categorical_crossentropy over every target position, padding included.
      loss_on_padding=True,
      # Keep the checkpoint with the lowest validation loss (the example overfits after ~25 epochs).
      best_metric="val/loss",
      # Validation every epoch, as fit() reports it.
      eval_every_epochs=1,
      # Greedy exact match on 200 validation sentences per epoch.
      eval_decode_samples=200,
      # Log the training loss every 50 steps.
      log_every_steps=50,
      # numbers:LANG data only, unused by anki:PATH (pinned: saved configs stay as they were).
      numbers_train=50_000,
  )
