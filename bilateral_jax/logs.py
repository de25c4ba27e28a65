"""Library log lines that say nothing to a user of this project, dropped where they arise."""
from __future__ import annotations

import logging
import sys


class _Drop(logging.Filter):

  def __init__(self, prefixes: tuple[str, ...]):
    super().__init__()
    self.prefixes = prefixes

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefixes)


def drop(*prefixes: str) -> None:
  """Drops absl log records (TFDS, Orbax) whose message starts with one of `prefixes`."""
  logging.getLogger("absl").addFilter(_Drop(prefixes))


def drop_late_loop_callbacks() -> None:
  """A failed Orbax restore leaves TensorStore reads in flight after Orbax has closed their asyncio loop;
  each one's completion callback then raises "Event loop is closed", which TensorStore reports through
  `sys.unraisablehook` (up to dozens of tracebacks around the one useful warning). Those, and only those,
  are dropped."""
  previous = sys.unraisablehook

  def hook(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  sys.unraisablehook = hook
