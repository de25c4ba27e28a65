"""Library log lines that say nothing to a user of this project, dropped where they arise."""
from __future__ import annotations

import logging


class _Drop(logging.Filter):

  def __init__(self, prefixes: tuple[str, ...]):
    super().__init__()
    self.prefixes = prefixes

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefixes)


def drop(*prefixes: str) -> None:
  """Drops absl log records (TFDS, Orbax) whose message starts with one of `prefixes`."""
  logging.getLogger("absl").addFilter(_Drop(prefixes))
