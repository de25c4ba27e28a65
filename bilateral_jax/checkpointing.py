"""Orbax checkpoints of a run: parameters, optimiser state, the data iterator's state, what the model is
(its settings and input shapes) and the run's progress.

`DIR/checkpoints` keeps the last `keep` steps; `DIR/best` keeps the step with the best evaluation
metric. Saves are asynchronous and atomic (Orbax writes a temporary directory and renames it when
complete), so a crash mid-save leaves the last good checkpoint intact. A step that does not restore (a
partial copy, a full disk) is skipped, newest first, with a warning, and kept on disk. A read-only
Checkpointer (eval.py) never creates, cleans or deletes anything, so it can run beside a training.
"""
from __future__ import annotations

import json
import logging
import os
import time

import flax
import jax
import orbax.checkpoint as ocp
from etils import epath

from bilateral_jax import logs, storage
from bilateral_jax.runs import differences


logs.drop("Given directory is read only")  # what a read-only Checkpointer asks for
logs.drop("Metadata file does not exist")  # an item's metadata read without its step's (restore_matching)
logs.drop_late_loop_callbacks()  # the tracebacks that follow a damaged step's failed restore


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was asked for."""


class CheckpointMismatch(ValueError):
  """The checkpoint was written by a different model than the config describes."""


def _normalize(tree):
  return json.loads(json.dumps(tree))


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


class Checkpointer:
  """Saves and restores one run's checkpoints under `workdir`. identity: JSON data that must be equal
  in a checkpoint for it to restore (the model's settings and input shapes), except its fields named in
  `tolerated` (e.g. the lengths, for an evaluation at another length: `trainer.evaluate_checkpoint`)."""

  def __init__(self, workdir: str | os.PathLike, identity: dict, *, keep: int = 3, read_only: bool = False,
               tolerated: tuple[str, ...] = ()):
    self.root = storage.path(workdir)
    self.identity = _normalize(identity)
    self.tolerated = tolerated
    self.read_only = read_only
    if read_only and not any((self.root / name).is_dir() for name in ("checkpoints", "best")):
      raise CheckpointError(f"no checkpoints in {self.root} (no checkpoints/ or best/ directory); is "
                            "--workdir the directory train.py wrote?")
    if not read_only:
      for name in ("checkpoints", "best"):
        for tmp in ocp.step.tmp_checkpoints(self.root / name) if (self.root / name).exists() else []:
          logging.warning("removing half-written checkpoint %s (a save was interrupted)", self.root / name / tmp)
    if read_only:
      options = lambda best: dict(read_only=True, create=False, save_interval_steps=0)
    else:
      options = lambda best: dict(max_to_keep=1 if best else keep, create=True, cleanup_tmp_directories=True)
    self.managers = {best: self._open(self.root / ("best" if best else "checkpoints"), options(best))
                     for best in (False, True)}

  @staticmethod
  def _open(directory: epath.Path, options: dict) -> ocp.CheckpointManager:
    """A manager of `directory`; opening lists the steps, which fails while a training beside a
    read-only reader deletes one, so that is tried again."""
    for attempt in range(10):
      try:
        return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(**options))
      except OSError:
        if not options.get("read_only"):
          raise
        time.sleep(0.2 * attempt)
    raise CheckpointError(f"the checkpoints in {directory} kept changing while they were listed")

  def steps(self, best: bool = False) -> list[int]:
    return sorted(self.managers[best].all_steps())

  def latest_step(self, best: bool = False) -> int | None:
    steps = self.steps(best)
    return steps[-1] if steps else None

  def save(self, step: int, params, opt_state, data_state: dict, progress: dict, best: bool = False) -> None:
    manager = self.managers[best]
    if step in manager.all_steps():  # saved by a run that crashed later and resumed from an earlier step
      manager.delete(step)
    manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        data=ocp.args.JsonSave(data_state), identity=ocp.args.JsonSave(self.identity),
        progress=ocp.args.JsonSave(_normalize(progress))))

  def restore(self, abstract_params, abstract_opt_state=None, *, step: int | None = None, best: bool = False):
    """-> (step, params, opt_state or None, data iterator state, progress) of `step`, or of the newest
    step that restores. The abstract trees (ShapeDtypeStructs with the shardings wanted now, so a
    checkpoint restores onto any device count or mesh) say what to restore: without
    `abstract_opt_state` only the parameters are read. A step that fails while a training beside this
    reader saves a newer one (and deletes old ones) is not damaged: the steps are listed again."""
    manager = self.managers[best]
    for attempt in range(10):
      available = self._listed(best)
      if available is None:  # a deletion in progress under the listing
        time.sleep(0.2 * attempt)
        continue
      if not available or (step is not None and step not in available):
        raise CheckpointError(f"no {'best ' if best else ''}checkpoint{'' if step is None else f' of step {step}'} "
                              f"in {manager.directory}" + (f" (steps: {available})" if available else ""))
      candidates = [step] if step is not None else available[::-1]
      for candidate in candidates:
        path = manager.directory / str(candidate)
        try:
          return self._restore_step(manager, candidate, abstract_params, abstract_opt_state)
        except CheckpointMismatch:
          raise
        except Exception as error:  # noqa: BLE001 - any failure to read means this step is damaged or gone
          if self.read_only:
            time.sleep(0.5)  # let a concurrent save finish renaming and deleting
          if self._listed(best) != available:
            break  # a training saved a new step and is deleting this one: list again
          self._damaged(path, error, step is not None)
      else:
        raise CheckpointError(f"none of the checkpoints in {manager.directory} restores (steps {candidates}); "
                              "see the warnings above")
    raise CheckpointError(f"the checkpoints in {manager.directory} kept changing while they were read")

  def _listed(self, best: bool) -> list[int] | None:
    """The steps on disk now, or None when a concurrent deletion makes the listing fail."""
    try:
      self.managers[best].reload()
    except Exception:  # noqa: BLE001
      return None
    return self.steps(best)

  def _restore_step(self, manager, step: int, abstract_params, abstract_opt_state):
    path = manager.directory / str(step)
    saved = manager.restore(step, args=ocp.args.Composite(identity=ocp.args.JsonRestore()))["identity"]
    changed = {key: pair for key, pair in differences(saved, self.identity).items() if key not in self.tolerated}
    if changed:
      raise CheckpointMismatch(f"the checkpoint at {path} was written by a different model: "
                               + "; ".join(f"{key}: checkpoint {a!r}, config {b!r}" for key, (a, b) in changed.items())
                               + "; use the config it was trained with, or a new --workdir")
    items = dict(params=ocp.args.StandardRestore(abstract_params), data=ocp.args.JsonRestore(),
                 progress=ocp.args.JsonRestore())
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return step, restored["params"], restored.get("opt_state"), restored["data"], restored["progress"]

  def restore_optimizer(self, step: int, abstract_opt_state, best: bool = False):
    """The optimiser state of `step` (restored after `restore` chose the step and checked its progress)."""
    path = self.managers[best].directory / str(step)
    try:
      return self.managers[best].restore(step, args=ocp.args.Composite(
          opt_state=ocp.args.StandardRestore(abstract_opt_state)))["opt_state"]
    except Exception as error:  # noqa: BLE001
      raise CheckpointError(f"the optimiser state at {path} does not restore ({_first_line(error)}); rerun "
                            "with --fresh_optimizer to continue its parameters with a new one") from error

  @staticmethod
  def _damaged(path: epath.Path, error: Exception, asked_for: bool) -> None:
    if asked_for:
      raise CheckpointError(f"the checkpoint at {path} does not restore ({_first_line(error)})") from error
    logging.warning("the checkpoint at %s does not restore (%s); it is kept, and the previous step is tried",
                    path, _first_line(error))

  def wait(self) -> None:
    for manager in self.managers.values():
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in self.managers.values():
      manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def restore_matching(workdir: str | os.PathLike, abstract_params, replicated) -> tuple[str, dict, dict]:
  """The parameters of another run (`workdir`'s best checkpoint, else its newest) whose path and shape
  match a leaf of `abstract_params` (ShapeDtypeStructs with shardings) -> (the checkpoint's path,
  {path: array restored onto the leaf's sharding and dtype}, a report {`not_found`: paths here that the
  checkpoint lacks, `shape_differs`: {path: (checkpoint shape, shape here)}, `unused`: checkpoint paths
  not here}). Whatever model wrote it: only paths and shapes must agree. `replicated`: where to put
  the leaves that are read but not used."""
  reader = Checkpointer(workdir, {}, read_only=True)
  try:
    best = reader.latest_step(best=True) is not None
    step = reader.latest_step(best=best)
    if step is None:
      raise CheckpointError(f"no checkpoint in {reader.root} to initialise from")
    path = reader.managers[best].directory / str(step)
    flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep="/")
    saved = flat(ocp.StandardCheckpointer().metadata(path / "params").item_metadata.tree)
    here = flat(abstract_params)
    matched = {name for name, leaf in saved.items() if name in here and tuple(leaf.shape) == here[name].shape}
    target = {name: here[name] if name in matched else jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated)
              for name, leaf in saved.items()}
    restored = reader.managers[best].restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(flax.traverse_util.unflatten_dict(target, sep="/"))))["params"]
  finally:
    reader.close()
  restored = flat(restored)
  report = {"not_found": sorted(set(here) - set(saved)),
            "shape_differs": {name: (list(saved[name].shape), list(here[name].shape))
                              for name in sorted(set(here) & set(saved) - matched)},
            "unused": sorted(set(saved) - set(here))}
  return str(path), {name: restored[name] for name in matched}, report
