"""What a run prints: the start-up summary, the progress of training, a slice's compiled memory."""
from __future__ import annotations

import logging
import sys

import jax
import numpy as np

from bilateral_jax import parallel, storage


def parameter_counts(params) -> dict[str, int]:
  """Parameters per top-level module, and `total`."""
  counts = {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(subtree)) for name, subtree in params.items()}
  return counts | {"total": sum(counts.values())}


def attention_summary(attention: str, bsa_paths: dict[str, str]) -> str:
  """'attention: bilateral via folded (layers 0-3)': the path of each run of layers of each stack (the
  stack named unless it is `transformer`); other attentions compute explicit logits."""
  if not bsa_paths:
    return f"attention: {attention} (explicit logits, all layers)"
  runs = []  # [stack, path, first layer, last layer], in call order
  for name, path in bsa_paths.items():
    stack, layer = name.split("/attention")[0].rsplit("/block_", 1)
    if runs and runs[-1][:2] == [stack, path] and runs[-1][3] == int(layer) - 1:
      runs[-1][3] = int(layer)
    else:
      runs.append([stack, path, int(layer), int(layer)])
  return "attention: " + ", ".join(
      ("" if stack == "transformer" else f"{stack}: ") + f"{attention} via {path} "
      + (f"(layer {first})" if first == last else f"(layers {first}-{last})") for stack, path, first, last in runs)


def print_summary(experiment, workdir: str, compile_seconds: float, flops, memory, sizes: dict | None) -> None:
  """The start-up summary of an `experiments.Experiment` (process 0): devices and mesh, parameters and
  their sharding, attention path per layer, data (`sizes`: examples per split read, None: not read), the
  compiled train step, the work directory."""
  if jax.process_index() != 0:
    return
  config, mesh = experiment.config, experiment.mesh
  counts = parameter_counts(experiment.abstract_state.params)
  total = counts.pop("total")
  data = ("data: " + ", ".join(f"{split} {size:,}" for split, size in sizes.items()) + f" examples ({config.data.name})"
          if sizes is not None else f"data: {config.data.name} not read (built from the config alone"
          + "".join(f"; assumed {field}: {why}" for field, why in experiment.data.assumed.items()) + ")")
  lines = [
      f"devices: {jax.device_count()} {jax.devices()[0].platform} in {jax.process_count()} process(es); "
      f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}",
      f"parameters: {total:,} (" + ", ".join(f"{name} {count:,}" for name, count in counts.items()) + ")",
      attention_summary(experiment.model.config.attention, experiment.bsa_paths),
      data,
      f"train step: compiled in {compile_seconds:.1f} s"
      + (f"; {flops / 1e9:.3g} GFLOP per step and device (XLA cost analysis)" if flops else "")
      + (f"; {memory['total'] / 2**20:.1f} MiB of device memory per device (arguments, outputs, temporaries)"
         if memory else ""),
      f"workdir: {storage.path(workdir)}",
  ]
  if mesh.shape["fsdp"] > 1:
    fsdp, unshardable = parallel.fsdp_report(experiment.abstract_state.params, mesh.shape["fsdp"],
                                             parallel.fsdp_min_size(config))
    lines.insert(2, fsdp)
    if unshardable:
      logging.warning(unshardable)
  stack = experiment.model.config
  if config.model.name != "lm" and not stack.sees_direction:
    lines.append(f"note: attention={stack.attention!r} spatial={stack.spatial!r} sees no direction: this bidirectional "
                 "model is exactly invariant to the isometries of its token grid (reversal, transposition; "
                 "docs/method.md section 2 'Direction')")
  print("\n".join(lines), flush=True)


def slice_summary(report: dict) -> str:
  """compile_for_slice's report for the console."""
  readable = parallel.readable_bytes
  memory, capacity = report["bytes_per_chip"], report["chip_bytes"]
  lines = [f"slice: {report['topology']} ({report['chips']} x {report['device_kind']}), mesh "
           + " ".join(f"{axis}={size}" for axis, size in report["mesh"].items()),
           f"attention: {report['attention_path']}"]
  if memory:
    lines.append("train step per chip: " + ", ".join(f"{name} {readable(memory[name])}" for name in
                                                     ("arguments", "temporaries", "outputs", "total")))
  if report["refused"]:
    lines.append(f"does NOT fit: libtpu refuses the {report['refused']}")
  else:
    fits = ("capacity unknown" if capacity is None else
            f"{'fits' if report['fits'] else 'does NOT fit'} in {readable(capacity)} per chip")
    lines[-1] += f"; eval step total {readable(report['eval_bytes_per_chip']['total'])}: {fits}"
    flops = ""
    if report["flops_per_chip"]:
      pallas = "pallas" in report["attention_path"]
      uncounted = " (without the Pallas kernels', which XLA does not count)" if pallas else ""
      flops = f"{report['flops_per_chip'] / 1e12:.3g} TFLOP per train step and chip{uncounted}; "
    seconds = report["compile_seconds"]
    lines.append(f"{flops}compiled in {seconds['train']} s (train), {seconds['eval']} s (eval)")
  lines += [f"assumed: {field}: {why}" for field, why in report["assumed"].items()]
  return "\n".join(lines)


class ProgressBar:
  """tqdm on a terminal (loss, steps/s, examples/s, ETA); one plain line per log step otherwise."""

  def __init__(self, start: int, total: int):
    self.interactive = jax.process_index() == 0 and sys.stderr.isatty()
    self.active = jax.process_index() == 0
    self.position, self.total = start, total
    if self.interactive:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

  def update(self, step: int, metrics: dict) -> None:
    if self.interactive:
      throughput = ({"tokens_s": f"{metrics['tokens_per_s']:.0f}"} if "tokens_per_s" in metrics
                    else {"examples_s": f"{metrics['examples_per_s']:.0f}"})
      self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{metrics['steps_per_s']:.1f}",
                           **throughput, refresh=False)
      self.bar.update(step - self.position)
    elif self.active:
      remaining = (self.total - step) / max(metrics["steps_per_s"], 1e-9)
      print(f"step {step}/{self.total} loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.4f} "
            f"{metrics['steps_per_s']:.1f} steps/s {metrics['examples_per_s']:.0f} examples/s "
            + (f"{metrics['tokens_per_s']:.0f} tokens/s " if "tokens_per_s" in metrics else "") +
            f"ETA {remaining:.0f}s", flush=True)
    self.position = step

  def close(self) -> None:
    if self.interactive:
      self.bar.close()
