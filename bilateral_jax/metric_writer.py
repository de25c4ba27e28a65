"""Where metrics go: `DIR/metrics.jsonl` (one strict-JSON object per line: step, split and the metrics;
a non-finite value is null), TensorBoard event files in `DIR/tensorboard` (with the config as text),
`DIR/plots/curves.png`, and the console. Only process 0 writes.

A resumed run first drops the lines of steps after the checkpoint it resumed from (they are trained
again), and TensorBoard is told to purge them, so each (step, split) appears once.
"""
from __future__ import annotations

import json
import math
import os

import jax
import ml_collections

from bilateral_jax import storage


def _strict(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, list):
    return [_strict(v) for v in value]
  return value


def read(workdir: str | os.PathLike) -> list[dict]:
  """The lines of `DIR/metrics.jsonl`."""
  path = storage.path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class MetricWriter:
  """Appends to metrics.jsonl locally; on an object store (whose objects cannot be appended to) it
  rewrites the file whole at each write."""

  def __init__(self, workdir: str | os.PathLike, resume_step: int = 0,
               config: ml_collections.ConfigDict | None = None):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    self.root = storage.path(workdir)
    self.root.mkdir(parents=True, exist_ok=True)
    self.path = self.root / "metrics.jsonl"
    self.lines = [json.dumps(line, allow_nan=False) + "\n" for line in read(self.root) if line["step"] <= resume_step]
    storage.write_whole(self.path, "".join(self.lines))
    self.jsonl = None if storage.is_remote(self.path) else self.path.open("a")
    from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
    self.tensorboard = SummaryWriter(str(self.root / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
    if config is not None:
      self.tensorboard.add_text("config", "```\n" + config.to_json_best_effort(indent=2) + "\n```", resume_step)

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.active:
      return
    line = {"step": int(step), "split": split} | {name: _strict(value) for name, value in metrics.items()}
    self.lines.append(json.dumps(line, allow_nan=False) + "\n")
    if self.jsonl is None:
      storage.write_whole(self.path, "".join(self.lines))
    else:
      self.jsonl.write(self.lines[-1])
      self.jsonl.flush()
    for name, value in metrics.items():
      values = value if isinstance(value, list) else [value]
      for index, item in enumerate(values):
        if isinstance(item, (int, float)) and math.isfinite(item):
          tag = f"{split}/{name}" + (f"/{index}" if isinstance(value, list) else "")
          self.tensorboard.add_scalar(tag, item, step)
    self.tensorboard.flush()

  def plot(self) -> None:
    """Redraws `DIR/plots/curves.png` from metrics.jsonl."""
    if self.active:
      from bilateral_jax import plots  # matplotlib is imported only when a plot is drawn
      plots.curves({self.root.name: read(self.root)}, self.root / "plots" / "curves.png")

  def close(self) -> None:
    if self.active:
      if self.jsonl is not None:
        self.jsonl.close()
      self.tensorboard.close()
