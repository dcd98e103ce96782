"""Exceptions for user mistakes.

Every error a user can cause (a bad config key, a missing or corrupt file, a
workdir that cannot be written, a NaN loss) is raised as a subclass of
`JaxsegError` with a one-line message that names the file or key and what is
wrong. The CLI prints that line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class JaxsegError(Exception):
  """Base class for errors caused by user input."""


class ConfigError(JaxsegError):
  """A config file or key is missing, misspelt or has a bad value."""


class DataError(JaxsegError):
  """A dataset file or directory is missing, malformed or inconsistent."""


class CheckpointError(JaxsegError):
  """A checkpoint is missing, corrupt or does not match the config."""


class WorkdirError(JaxsegError):
  """The workdir or an output directory cannot be written."""


class TrainingError(JaxsegError):
  """Training cannot go on (for example the loss became NaN)."""
