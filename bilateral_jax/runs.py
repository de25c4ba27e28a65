"""What a run keeps in its work directory besides checkpoints and metrics: the lock that makes it the
only run writing there, and the resolved config it was (last) started with (`DIR/config.json`).

Every path goes through `storage.path`, so a work directory on an object store (`gs://...`) works as a
local one does.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import socket
import subprocess
import threading
import time
import uuid

import ml_collections
from etils import epath

from bilateral_jax import storage


class WorkdirInUse(RuntimeError):
  """Another live run holds the work directory's lock."""


class Lock:
  """`DIR/lock`: {host, pid, started, heartbeat, token} of the process that trains into DIR, its
  heartbeat (a wall-clock time) rewritten every `HEARTBEAT_S` seconds while it is held. A lock is taken
  over, with a warning, when its holder is gone: on this host, its pid is not running; from another host
  (pids mean nothing across hosts), its heartbeat is older than `STALE_S`. Locally the lock is created
  atomically; an object store has no exclusive create, so there a claim holds only if it still reads
  back after `SETTLE_S` (of two runs that start together, the last writer wins and the other refuses)."""
  HEARTBEAT_S = 30.0
  STALE_S = 300.0
  SETTLE_S = 2.0

  def __init__(self, workdir: str | os.PathLike):
    self.path = storage.path(workdir) / "lock"
    self.held = False
    self._stop = threading.Event()
    self._beating: threading.Thread | None = None

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "heartbeat": now,
            "started": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds")}
    for _ in range(2):
      holder = self._holder()
      if holder is not None and self._alive(holder, mine["host"]):
        raise WorkdirInUse(
            f"{self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} (since "
            f"{holder.get('started')}); wait for that run or use another --workdir (if it is gone, delete "
            f"{self.path})")
      if self.path.exists():
        logging.warning("taking over %s from a run that is gone (%s)", self.path, holder)
        self.path.unlink(missing_ok=True)
      if self._claim(mine):
        self.held, self._mine = True, mine
        self._beating = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._beating.start()
        return
    raise WorkdirInUse(f"could not take {self.path}: another run took it at the same time")

  def _claim(self, mine: dict) -> bool:
    if not storage.is_remote(self.path):
      try:
        with open(self.path, "x") as f:
          json.dump(mine, f)
        return True
      except FileExistsError:
        return False
    self.path.write_text(json.dumps(mine))
    time.sleep(self.SETTLE_S)
    return self._holder() == mine

  def _alive(self, holder: dict, host: str) -> bool:
    if holder.get("host") == host:
      return _running(holder.get("pid"))
    return time.time() - float(holder.get("heartbeat", 0)) < self.STALE_S

  def _beat(self) -> None:
    while not self._stop.wait(self.HEARTBEAT_S):
      self._mine["heartbeat"] = time.time()
      try:
        storage.write_whole(self.path, json.dumps(self._mine))
      except OSError as error:  # a transient storage error: the next beat tries again
        logging.warning("could not renew %s: %s", self.path, error)

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):  # absent, or half-written by a run killed while taking it
      return None

  def release(self) -> None:
    if self.held:
      self._stop.set()
      self._beating.join()
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


def config_path(workdir: str | os.PathLike) -> epath.Path:
  return storage.path(workdir) / "config.json"


def _plain(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  storage.write_whole(config_path(workdir), json.dumps(_plain(config), indent=2, sort_keys=True) + "\n")


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict | None:
  """The config saved by the last run in `workdir` (lists as tuples, as configs write them; a run saved
  before the rename has its `model.transformer.attention_implementation` read as `attention_path`), or None."""
  saved = config_path(workdir)
  if not saved.is_file():
    return None
  config = json.loads(saved.read_text())
  transformer = config.get("model", {}).get("transformer", {})
  if "attention_implementation" in transformer:
    transformer["attention_path"] = transformer.pop("attention_implementation")
  return ml_collections.ConfigDict(_tuples(config))


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


def commit() -> str:
  """The code's git commit (with `+changes` when the work tree's code differs from it; documentation,
  docs/ and *.md, does not count), or `unknown` outside a git checkout: the commit a study's summary
  states."""
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs", ":!*.md"],
                           cwd=root, capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + ("+changes" if dirty else "")
