"""Train-step throughput of the default config: standard attention vs BSA, standard residual vs GRC.

    python benchmarks/train_step.py [--rounds 5] [--steps 20] [--out runs/benchmark_train_step.json]

All four variants are compiled first, then timed in interleaved rounds (round-robin, so machine noise
hits them alike); the median round gives steps/s and examples/s, and ratios are taken against
standard attention (learned additive positions) with the standard residual.
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from bilateral_jax import experiments, parallel  # noqa: E402
from bilateral_jax.data import pipeline, sources  # noqa: E402
from configs import common, default  # noqa: E402


def main():
  parallel.skip_tpu_probe_without_accelerators()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--out", default="runs/benchmark_train_step.json")
  args = parser.parse_args()

  runs = {}
  for name, overrides in common.ABLATION.items():
    config = default.get_config()
    config.model.transformer.update(overrides)
    experiment = experiments.Experiment(config, sources.describe_split(config.data, "train"))
    train = sources.shared_split(config.data, "train")
    batches = pipeline.train_batches(train, global_batch=config.train.batch_size, seed=0,
                                     transform=experiment.train_transform)
    data = [parallel.global_batch(next(batches), experiment.mesh) for _ in range(args.steps)]
    state = experiment.init(jax.random.key(0))
    state, metrics = experiment.train_step(state, data[0])  # compile
    jax.block_until_ready(metrics)
    runs[name] = dict(experiment=experiment, state=state, data=data, times=[])

  for _ in range(args.rounds):
    for run in runs.values():
      state = run["state"]
      start = time.perf_counter()
      for batch in run["data"]:
        state, metrics = run["experiment"].train_step(state, batch)
      jax.block_until_ready(metrics)
      run["times"].append(time.perf_counter() - start)
      run["state"] = state

  batch_size = default.get_config().train.batch_size
  baseline = None
  results = []
  print(f"{jax.devices()[0].device_kind} x {jax.device_count()}, batch {batch_size}, "
        f"{args.rounds} rounds of {args.steps} steps")
  print(f"{'variant':<40}{'steps/s':>10}{'examples/s':>12}{'time ratio':>12}")
  for name, run in runs.items():
    seconds = statistics.median(run["times"]) / args.steps
    baseline = baseline or seconds
    results.append(dict(variant=name, steps_per_s=1 / seconds, examples_per_s=batch_size / seconds,
                        time_ratio_vs_standard=seconds / baseline))
    print(f"{name:<40}{1 / seconds:>10.1f}{batch_size / seconds:>12.0f}{seconds / baseline:>12.3f}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(device=str(jax.devices()[0].device_kind), devices=jax.device_count(),
                                 batch_size=batch_size, rounds=args.rounds, steps=args.steps,
                                 results=results), indent=2))


if __name__ == "__main__":
  main()
