"""The one exception type users see: a message naming the problem and the fix."""


class UserError(Exception):
  """A problem with the user's input, files or environment.

  The command line prints its message without a traceback and exits with 2.
  """


class DataError(UserError):
  """A data file or data spec that cannot be read."""


class CheckpointError(UserError):
  """A missing, corrupt or incompatible checkpoint or workdir."""
