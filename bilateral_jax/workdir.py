"""What a run keeps in its work directory besides checkpoints and metrics: the lock that makes it the
only run writing there, and the resolved config it was (last) started with (`DIR/config.json`)."""
from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import socket

import ml_collections


class WorkdirInUse(RuntimeError):
  """Another live run holds the work directory's lock."""


class Lock:
  """`DIR/lock`: {host, pid, started} of the process that trains into DIR. Taken atomically; a lock left
  by a process that is gone (same host, pid not running) is taken over with a warning; one held by a live
  process, or by another host, refuses the run."""

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / "lock"
    self.held = False

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):
      try:
        with open(self.path, "x") as f:
          json.dump(mine, f)
        self.held = True
        return
      except FileExistsError:
        holder = self._holder()
        if holder is not None and not (holder.get("host") == mine["host"] and not _running(holder.get("pid"))):
          raise WorkdirInUse(
              f"{self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} (since "
              f"{holder.get('started')}); wait for that run or use another --workdir (if it is gone, delete "
              f"{self.path})") from None
        logging.warning("taking over %s from a run that is gone (%s)", self.path, holder)
        self.path.unlink(missing_ok=True)
    raise WorkdirInUse(f"could not take {self.path}: another run took it at the same time")

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):  # half-written by a run killed while taking it
      return None

  def release(self) -> None:
    if self.held:
      self.path.unlink(missing_ok=True)
      self.held = False


def _running(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True  # someone else's process, or an unreadable pid: assume alive
  return True


def config_path(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir) / "config.json"


def _plain(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def save_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  path = config_path(workdir)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(_plain(config), indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict | None:
  """The config saved by the last run in `workdir` (lists as tuples, as configs write them), or None."""
  path = config_path(workdir)
  if not path.is_file():
    return None
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def changes(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{dotted field: (saved value, current value)} for every field that differs."""
  return differences(_plain(saved), _plain(current))


def differences(before: dict, after: dict) -> dict[str, tuple]:
  """{dotted key: (before, after)} for every leaf of two nested dicts that differs ("<absent>" where one
  has no such key), in sorted order."""
  flat_before, flat_after = _flatten(before), _flatten(after)
  missing = "<absent>"
  return {key: (flat_before.get(key, missing), flat_after.get(key, missing))
          for key in sorted(set(flat_before) | set(flat_after))
          if flat_before.get(key, missing) != flat_after.get(key, missing)}


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out |= _flatten(value, f"{prefix}{key}.")
    else:
      out[f"{prefix}{key}"] = value
  return out
