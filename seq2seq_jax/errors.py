"""The one exception type users see: a message naming the problem and the fix."""

from __future__ import annotations

import numbers


class UserError(Exception):
  """A problem with the user's input, files or environment.

  The command line prints its message without a traceback and exits with 2.
  """


class DataError(UserError):
  """A data file or data spec that cannot be read."""


class CheckpointError(UserError):
  """A missing, corrupt or incompatible checkpoint or workdir."""


def is_whole_number(value: object) -> bool:
  """An int or a NumPy integer (both numbers.Integral), not a bool: what a count or a
  size given from Python must be, for the checks that name it."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def first_line(error: BaseException, default: str = "", limit: int | None = None) -> str:
  """The first line of an exception's message (default where it has none), cut to limit
  characters: what a one-line error quotes of a library's own message."""
  text = str(error).strip()
  return text.splitlines()[0][:limit] if text else default


# a Ctrl-C before a command's own handling began (its modules importing, its arguments
# parsed): said in one line by the entry point (__main__.run) and cli.main
STARTING_INTERRUPTED = "seq2seq-jax: interrupted by SIGINT while starting; nothing was done."
