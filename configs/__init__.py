"""The shipped config files, installed as seq2seq_jax.configs: `--config NAME` loads NAME.py."""
