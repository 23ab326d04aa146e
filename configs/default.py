"""The project's recommended settings for the embedded numbers:fr task.

English number words -> French number words up to 999,999, character level,
Luong attention with input feeding. About 15 minutes on 2 CPU cores.
"""

from seq2seq_jax.config import Config


def get_config() -> Config:
  # Config()'s defaults are the recommended model; seq2seq_jax/config.py says why each one.
  return Config()
