"""Host input pipeline against the train step: the examples/s one host core feeds, per config, beside the
examples/s the compiled train step consumes at the config's batch on this host's devices.

    python benchmarks/input_pipeline.py [--configs configs/default.py,configs/digits_vit.py,...]
        [--config configs/x.py --config.field=value ...] [--examples 512] [--steps 3]
        [--out runs/benchmark_input_pipeline.json]

For each config (those of --configs, then --config with its overrides, if given):
- input ex/s/core: the local batches `pipeline.train_batches` yields for the config (its train source, train
  transform and repeats, seed 0, as `trainer._train` builds them) read one after another in this thread,
  after one warm-up batch, for at least --examples examples; examples divided by the CPU seconds this
  process spent meanwhile (so helper threads of the readers count, and other jobs on a busy host do not).
  It is what one host core delivers. Training reads the same batches with a few threads of its own process
  (they share one GIL: about one core's worth, unless the work releases the GIL) or with train.input_workers
  worker processes (about one core each).
- step ex/s: the compiled train step at the config's train.batch_size, timed over --steps steps after its
  compilation and a first run. On a CPU host this is CPU compute on the cores the pipeline also needs; an
  accelerator consumes far more, so there the figure to compare with is the accelerator's: run the script
  on that host (the input side is host cores either way).
- cores needed: step ex/s / input ex/s/core, the host cores the input pipeline needs to keep up: about the
  train.input_workers it needs (the training process's own threads give about one core).

A step whose compiled memory exceeds --max_step_gib is measured in micro-batches (train.grad_accum_steps
doubled until it fits): the same examples per step, summed over micro-batches; its row says so.
"""
import gc
import importlib.util
import json
import math
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

SHIPPED = ("configs/default.py", "configs/digits_vit.py", "configs/lra_pathfinder.py",
           "configs/shakespeare_char_lm.py")  # the configs whose data is available offline
# Generated data that takes long to build is built smaller for --configs: Pathfinder's 160k/20k/20k take about
# 25 minutes on one core (ListOps' 20k/1k/1k take seconds). Reading an example costs the same either way.
SLOW_TO_GENERATE = {"pathfinder_generated": dict(train_size=4_096, validation_size=256, test_size=256)}

flags.DEFINE_list("configs", list(SHIPPED), "Config files (path or path:variant) measured as they are shipped, "
                  "except generated Pathfinder data: built at 4,096/256/256 examples (the full size takes ~25 min).")
config_flags.DEFINE_config_file("config", None, "One more config file, with --config.<field>=<value> overrides "
                                "(e.g. configs/deit_tiny_imagenet.py --config.data.directory=...).")
flags.DEFINE_integer("examples", 512, "Examples read (whole batches, at least one) after the warm-up batch.")
flags.DEFINE_integer("steps", 3, "Train steps timed after the compilation and a first step.")
flags.DEFINE_float("max_step_gib", 6.0, "Largest compiled train-step memory (GiB per device) to run; a larger "
                   "step is measured in micro-batches (train.grad_accum_steps doubled until it fits).")
flags.DEFINE_string("out", "runs/benchmark_input_pipeline.json", "Where the rows are written as JSON.")
FLAGS = flags.FLAGS


def load_config(argument: str):
  """configs/x.py or configs/x.py:variant -> its get_config()."""
  path, _, variant = argument.partition(":")
  spec = importlib.util.spec_from_file_location(f"benchmarked_{pathlib.Path(path).stem}", path)
  if spec is None or not pathlib.Path(path).is_file():
    raise app.UsageError(f"no config file {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def shrink_generated(config) -> str | None:
  """Data that SLOW_TO_GENERATE names, built at its smaller sizes -> a note saying so, or None."""
  data, sizes = config.data, SLOW_TO_GENERATE.get(config.data.name)
  if sizes is None or all(data[name] <= size for name, size in sizes.items()):
    return None
  shipped = "/".join(f"{data[name]:,}" for name in sizes)
  data.update(sizes)
  return (f"data {data.name} built at {'/'.join(f'{size:,}' for size in sizes.values())} examples instead of "
          f"{shipped} (those take long to generate; reading an example costs the same)")


def batch_dataset(batches):
  """The grain MapDataset of local batches that train_batches' iterator reads (batch k a function of k)."""
  dataset = getattr(batches, "local_batches", None)
  if dataset is None:
    raise TypeError(f"pipeline.train_batches returned a {type(batches).__name__} without `local_batches`: adapt "
                    "benchmarks/input_pipeline.py to read its batches in one thread")
  return dataset


def measure_input(experiment, examples: int) -> dict:
  """Reads the train pipeline's batches in this thread: time to the first batch, then at least `examples`
  examples timed (wall and this process's CPU seconds). -> figures and the batches read."""
  from bilateral_jax.data import pipeline, sources  # noqa: PLC0415
  import jax  # noqa: PLC0415

  config = experiment.config
  start = time.perf_counter()
  train = sources.shared_split(config.data, "train")
  batches = pipeline.train_batches(train, global_batch=config.train.batch_size, seed=0,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   transform=experiment.train_transform, repeats=config.augment.repeats)
  dataset = batch_dataset(batches)
  read = [dataset[0]]  # the warm-up batch: files opened, code paths taken once
  first_batch_s = time.perf_counter() - start
  local = len(next(iter(read[0].values())))
  count = max(1, math.ceil(examples / local))
  wall, cpu = time.perf_counter(), time.process_time()
  read += [dataset[index] for index in range(1, count + 1)]
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return dict(first_batch_s=first_batch_s, examples_read=count * local, input_wall_s=wall, input_cpu_s=cpu,
              input_examples_per_core_s=count * local / cpu, batches=read)


def measure_step(experiment, batches: list, steps: int, max_bytes: float) -> dict:
  """Compiles `experiment`'s train step at its train.batch_size (in micro-batches, on a new experiment, if its
  memory exceeds max_bytes) and times `steps` steps after a first one on the given local batches (cycled)."""
  import jax  # noqa: PLC0415

  from bilateral_jax import experiments, parallel  # noqa: PLC0415

  batch_size = experiment.config.train.batch_size
  while True:
    step, compile_s, _, memory = experiment.compile_train_step()
    accum = experiment.config.train.grad_accum_steps
    fits = memory is None or memory["total"] <= max_bytes
    if fits or batch_size % (2 * accum * experiment.mesh.size):
      break
    config = experiment.config.copy_and_resolve_references()
    config.train.grad_accum_steps = 2 * accum
    del step, experiment
    gc.collect()
    experiment = experiments.Experiment(config, experiment.data)
  if not fits:
    raise SystemExit(f"the train step needs {memory['total'] / 2**30:.1f} GiB per device at batch {batch_size} "
                     f"even in {accum} micro-batches; raise --max_step_gib or lower the batch")
  data = [parallel.global_batch(batch, experiment.mesh) for batch in batches[:steps]]
  state = experiment.init(jax.random.key(0))
  state, metrics = step(state, data[0])  # the first run: allocations, thread pools
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for index in range(steps):
    state, metrics = step(state, data[index % len(data)])
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  return dict(grad_accum_steps=accum, compile_s=compile_s, step_memory_bytes=memory and memory["total"],
              step_s=seconds, step_examples_per_s=batch_size / seconds)


def host_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # noqa: PLC0415

  from bilateral_jax import experiments, parallel  # noqa: PLC0415
  from bilateral_jax.data import pipeline, sources  # noqa: PLC0415
  parallel.skip_tpu_probe_without_accelerators()

  runs = []
  for argument in FLAGS.configs:
    config = load_config(argument)
    runs.append((argument, config, shrink_generated(config)))
  if FLAGS.config is not None:
    name = config_flags.get_config_filename(FLAGS["config"])
    overrides = config_flags.get_override_values(FLAGS["config"])
    note = ", ".join(f"{field}={value}" for field, value in overrides.items()) or None
    runs.append((name + (" (overrides)" if overrides else ""), FLAGS.config, note and f"with {note}"))
  if not runs:
    raise app.UsageError("nothing to measure: give --configs or --config")

  device = jax.devices()[0]
  load = os.getloadavg()[0]
  cores = host_cores()
  rows, notes = [], []
  for name, config, note in runs:
    start = time.perf_counter()
    experiment = experiments.Experiment(config, sources.describe_split(config.data, "train"))  # builds the data once
    data_s = time.perf_counter() - start
    row = dict(config=name, batch_size=experiment.config.train.batch_size, data_ready_s=data_s,
               input_workers=experiments.input_workers(experiment.config))  # what training would start here
    row |= measure_input(experiment, FLAGS.examples)
    batches = row.pop("batches")
    row |= measure_step(experiment, batches, FLAGS.steps, FLAGS.max_step_gib * 2**30)
    row["cores_needed"] = row["step_examples_per_s"] / row["input_examples_per_core_s"]
    rows.append(row)
    if note:
      notes.append(f"{name}: {note}")
    if row["grad_accum_steps"] > 1:
      notes.append(f"{name}: step measured in {row['grad_accum_steps']} micro-batches of "
                   f"{row['batch_size'] // row['grad_accum_steps']} (batch {row['batch_size']} needs more than "
                   f"--max_step_gib {FLAGS.max_step_gib:g} GiB here)")
    del experiment, batches
    gc.collect()

  busy = f", load average {load:.1f} at the start" + (" (busy: other jobs share these cores)" if load > 0.5 else "")
  print(f"host: {cores} cores{busy}; train step on {device.device_kind} x {jax.device_count()}; "
        f"{FLAGS.examples} examples read per config, {FLAGS.steps} steps timed")
  width = max(len("config"), *(len(row["config"]) for row in rows)) + 2
  print(f"{'config':<{width}}{'batch':>7}{'input ex/s/core':>17}{'first batch s':>15}{'step ex/s':>11}"
        f"{'cores needed':>14}")
  for row in rows:
    print(f"{row['config']:<{width}}{row['batch_size']:>7}{row['input_examples_per_core_s']:>17.0f}"
          f"{row['first_batch_s']:>15.2f}{row['step_examples_per_s']:>11.0f}{row['cores_needed']:>14.3f}")
  print("input ex/s/core: train_batches' batches read one after another in one thread, per CPU second of this "
        "process. cores needed = step ex/s / input ex/s/core: about the train.input_workers processes that "
        f"keep the step fed (train.input_workers=-1 starts {pipeline.default_workers()} on this host; without "
        "workers the training process's reading threads share one GIL, about one core).")
  if device.platform == "cpu":
    print("step ex/s here is CPU compute, on the cores the input also needs: on an accelerator the step's demand "
          "is much higher, and this run measures only the host side of it (input ex/s/core); run the script on "
          "the accelerator's host to measure the demand there.")
  else:
    print(f"step ex/s: the step on {device.device_kind}; input ex/s/core: this host's cores.")
  for note in notes:
    print(note)
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(device=str(device.device_kind), devices=jax.device_count(), host_cores=cores,
                                 load_average=load, examples=FLAGS.examples, steps=FLAGS.steps, rows=rows,
                                 notes=notes), indent=2))


if __name__ == "__main__":
  app.run(main)
