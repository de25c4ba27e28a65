"""grain pipelines: seeded shuffling, per-process shards of each global batch, checkpointable iterators.

Process p of P reads rows [p * B/P, (p + 1) * B/P) of every global batch of B rows, so the global batch
the model sees is the same whatever the number of processes.
"""
from __future__ import annotations

import os

import grain
import numpy as np
from absl import flags


def _local_rows(examples: grain.MapDataset, global_batch: int, process_index: int,
                process_count: int, num_rows: int) -> grain.MapDataset:
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by the {process_count} processes")
  local = global_batch // process_count

  def global_row(i: int) -> int:
    batch, row = divmod(i, local)
    return batch * global_batch + process_index * local + row

  return grain.MapDataset.range(num_rows).map(lambda i: examples[global_row(i)]).batch(local)


class Batches:
  """An endless iterator over `local_batches` (a grain MapDataset: batch k is a function of k alone), read
  by `READ_THREADS` threads into a bounded buffer, or by `workers` processes (each with a bounded buffer).
  Its state is the number of batches taken, `{"next_index": k}` (what grain's own iterator writes), so a
  run resumes with any number of workers."""
  READ_THREADS = 4
  BUFFERED_BATCHES = 8

  def __init__(self, local_batches: grain.MapDataset, workers: int = 0):
    self.local_batches, self.workers = local_batches, workers
    self.set_state({"next_index": 0})

  def set_state(self, state: dict) -> None:
    self.taken, self.iterator = int(state["next_index"]), None  # the readers start at the next batch taken

  def get_state(self) -> dict:
    return {"next_index": self.taken}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.iterator is None:
      remaining = self.local_batches[self.taken:].to_iter_dataset(
          grain.ReadOptions(num_threads=self.READ_THREADS, prefetch_buffer_size=self.BUFFERED_BATCHES))
      if self.workers:
        if not flags.FLAGS.is_parsed():  # outside an absl app (a notebook): grain's workers read its flags' defaults
          flags.FLAGS.mark_as_parsed()
        remaining = remaining.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=self.workers, per_worker_buffer_size=max(1, self.BUFFERED_BATCHES // self.workers)))
      self.iterator = iter(remaining)
    batch = next(self.iterator)
    self.taken += 1
    return batch


def default_workers(cpus: int | None = None) -> int:
  """Input worker processes for a host of `cpus` cores (default this one's): none up to 7 cores (the
  main process's threads suffice, and a worker costs seconds to start), then one per 4 cores, at most 32."""
  cpus = (os.cpu_count() or 1) if cpus is None else cpus
  return 0 if cpus < 8 else min(cpus // 4, 32)


def train_batches(source, *, global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
                  transform=None, repeats: int = 1, workers: int = 0) -> Batches:
  """An endless iterator of local batches, reshuffled each epoch; `get_state`/`set_state` resume it.
  transform(example, rng) -> example runs per example with a Generator derived from its position in the
  global order, so augmentation does not depend on the number of processes (or of input `workers`).

  repeats > 1 is repeated augmentation (DeiT, after Hoffer et al.): each epoch of len(source) examples
  takes every example of its shuffled order `repeats` times in a row (differently augmented), so it covers
  the first len(source) / repeats of that order.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be a positive integer, got {repeats}")
  size = len(source)
  order = grain.MapDataset.range(size).shuffle(seed=seed).repeat()
  base = grain.MapDataset.source(source)

  def example(position: int):
    epoch, offset = divmod(position, size)
    return base[order[epoch * size + offset // repeats]]

  examples = grain.MapDataset.range(2**62).map(example)
  if transform is not None:
    examples = examples.random_map(transform, seed=seed)
  rows = 2**62 // global_batch * (global_batch // process_count)
  return Batches(_local_rows(examples, global_batch, process_index, process_count, rows), workers)


def eval_batches(source, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                 transform=None):
  """Local batches covering the source once in order; the last global batch is filled with weight-0
  copies of the first example, so every batch has the same shape. transform(example, None) -> example."""
  num_batches = -(-len(source) // global_batch)
  base = grain.MapDataset.source(source)

  def padded(i: int):
    if i < len(source):
      return base[i]
    example = dict(base[0])
    example["weight"] = np.zeros_like(example["weight"])
    return example

  examples = grain.MapDataset.range(num_batches * global_batch).map(padded)
  if transform is not None:
    examples = examples.map(lambda example: transform(example, None))
  local = global_batch // process_count
  return _local_rows(examples, global_batch, process_index, process_count, num_batches * local)
