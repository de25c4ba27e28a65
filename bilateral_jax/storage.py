"""Paths of runs and data: a local path or any URL that `etils.epath` speaks (`gs://...`), so a work
directory, a data directory or a TFDS data directory on an object store works wherever a local one does."""
from __future__ import annotations

import os

from etils import epath


def path(location: str | os.PathLike) -> epath.Path:
  """`location` as an `epath.Path`: a URL (`gs://bucket/run`) as it is, a local path made absolute."""
  location = epath.Path(location)
  return location if is_remote(location) else location.absolute()


def is_remote(location: str | os.PathLike) -> bool:
  return "://" in os.fspath(location)


def write_whole(target: epath.Path, data: str | bytes) -> None:
  """Writes `data` at `target` so that a reader never sees half of it: locally through a temporary file
  renamed over it; on an object store directly (an object is replaced whole when its upload completes)."""
  write = lambda where: where.write_bytes(data) if isinstance(data, bytes) else where.write_text(data)
  if is_remote(target):
    write(target)
    return
  tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
  write(tmp)
  tmp.replace(target)
