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


def first_line(error: BaseException) -> str:
  """The error's first line, for a one-line message; its type's name when it has no text."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
