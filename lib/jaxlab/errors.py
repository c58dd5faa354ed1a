"""Errors whose message is meant for the researcher, printed as one line by launch.py."""


class JaxlabError(Exception):
  """A problem the user can fix; launch.py prints its message without a traceback."""

  exit_code = 1


class ConfigError(JaxlabError):
  """A bad config, flag or workdir."""

  exit_code = 2


class DataError(JaxlabError):
  """Missing or malformed data."""


class NonFiniteLossError(JaxlabError):
  """The loss became NaN or Inf; training stopped."""
