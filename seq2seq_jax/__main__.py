"""`python -m seq2seq_jax` is the `seq2seq-jax` command."""

from seq2seq_jax.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
