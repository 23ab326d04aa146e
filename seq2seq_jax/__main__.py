"""`python -m seq2seq_jax` is the `seq2seq-jax` command; `run` is its entry point."""

import sys

from seq2seq_jax.errors import STARTING_INTERRUPTED


def run() -> int:
  """The command (cli.main). A Ctrl-C while its modules import, its first tenth of a second
  or so, is said in one line, not as the import's traceback."""
  try:
    from seq2seq_jax.cli import main
  except KeyboardInterrupt:
    print(STARTING_INTERRUPTED, file=sys.stderr)
    return 130
  return main()


if __name__ == "__main__":
  raise SystemExit(run())
