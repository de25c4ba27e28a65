"""Where metrics go: `DIR/metrics.jsonl` (one JSON object per line: step, split and the metrics),
TensorBoard event files in `DIR/tensorboard`, and the console. Only process 0 writes."""
from __future__ import annotations

import json
import math
import pathlib

import jax


class MetricWriter:

  def __init__(self, workdir: str | pathlib.Path):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    root = pathlib.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    self.jsonl = (root / "metrics.jsonl").open("a")
    from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
    self.tensorboard = SummaryWriter(str(root / "tensorboard"))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.active:
      return
    self.jsonl.write(json.dumps({"step": int(step), "split": split, **metrics}) + "\n")
    self.jsonl.flush()
    for name, value in metrics.items():
      values = value if isinstance(value, list) else [value]
      for index, item in enumerate(values):
        if isinstance(item, (int, float)) and math.isfinite(item):
          tag = f"{split}/{name}" + (f"/{index}" if isinstance(value, list) else "")
          self.tensorboard.add_scalar(tag, item, step)
    self.tensorboard.flush()

  def close(self) -> None:
    if self.active:
      self.jsonl.close()
      self.tensorboard.close()
