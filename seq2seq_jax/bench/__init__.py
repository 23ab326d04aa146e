"""The `seq2seq-jax benchmark` harness: seq2seq_jax against Keras 3 and PyTorch, outside the core package."""
