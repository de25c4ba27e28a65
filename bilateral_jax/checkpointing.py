"""Orbax checkpoints of a run: the train state, the data iterator's state and the model's settings.

`DIR/checkpoints` keeps the last `keep` steps; `DIR/best` keeps the step with the best evaluation
metric. Saves are asynchronous and atomic (Orbax writes a temporary directory and renames it when
complete), so a crash mid-save leaves the last good checkpoint intact; the unfinished directory is
skipped with a warning.
"""
from __future__ import annotations

import json
import logging
import pathlib

import jax
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
  """The checkpoint was written by a different model than the config describes."""


def _normalize(tree):
  return json.loads(json.dumps(tree))


def _differences(saved, current, prefix=""):
  keys = sorted(set(saved) | set(current))
  out = []
  for key in keys:
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
  return out


class Checkpointer:
  """Saves and restores one run's checkpoints under `workdir`."""

  def __init__(self, workdir: str | pathlib.Path, model_settings: dict, *, keep: int = 3):
    self.root = pathlib.Path(workdir).absolute()
    self.model_settings = _normalize(model_settings)
    for name in ("checkpoints", "best"):
      for tmp in ocp.step.tmp_checkpoints(self.root / name) if (self.root / name).exists() else []:
        logging.warning("skipping half-written checkpoint %s (a save was interrupted)", self.root / name / tmp)
    options = dict(create=True, cleanup_tmp_directories=True)
    self.latest = ocp.CheckpointManager(self.root / "checkpoints",
                                        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options))
    self.best = ocp.CheckpointManager(self.root / "best",
                                      options=ocp.CheckpointManagerOptions(max_to_keep=1, **options))

  def _manager(self, best: bool) -> ocp.CheckpointManager:
    return self.best if best else self.latest

  def latest_step(self, best: bool = False) -> int | None:
    return self._manager(best).latest_step()

  def save(self, step: int, state, data_state: dict, progress: dict, best: bool = False) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                              model=ocp.args.JsonSave(self.model_settings),
                              progress=ocp.args.JsonSave(_normalize(progress)))
    manager = self._manager(best)
    if step in manager.all_steps():  # saved by a run that crashed later and resumed from an earlier step
      manager.delete(step)
    manager.save(step, args=args, force=True)

  def restore(self, step: int, abstract_state, best: bool = False):
    """-> (state, data iterator state, progress). abstract_state: ShapeDtypeStructs with the shardings
    wanted now, so a checkpoint restores onto any device count or mesh."""
    manager = self._manager(best)
    saved = manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
    differences = _differences(saved, self.model_settings)
    if differences:
      raise CheckpointMismatch(
          f"the checkpoint at {manager.directory / str(step)} was written by a different model:\n  "
          + "\n  ".join(differences) + "\nuse the config it was trained with, or a new --workdir")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        progress=ocp.args.JsonRestore()))
    return restored["state"], restored["data"], restored["progress"]

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
