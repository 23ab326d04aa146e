"""seq2seq_jax: LSTM encoder-decoder sequence-to-sequence learning in JAX/Flax."""

__version__ = "0.1.0"
