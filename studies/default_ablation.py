"""BSA and GRC against standard attention and the standard residual on the default ListOps task.

    python studies/default_ablation.py [--seeds 0 1 2] [--workdir runs/default_ablation]

Trains the default config once per variant and seed (the seed drives initialisation and shuffling; the
data is the same), then prints test accuracy as mean ± std over seeds, and the majority-class rate.
Results go to WORKDIR/summary.json. Each run resumes if its workdir already holds a checkpoint.
"""
import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bilateral_jax import trainer  # noqa: E402
from bilateral_jax.data import sources  # noqa: E402
from configs import common, default  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default="runs/default_ablation")
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)

  test = sources.load_split(default.get_config().data, "test")
  labels = np.asarray([test[i]["label"] for i in range(len(test))])
  majority = np.bincount(labels).max() / len(labels)
  summary = {"majority_class_test_accuracy": float(majority), "variants": {}}
  for name, overrides in common.ABLATION.items():
    accuracies = []
    for seed in args.seeds:
      config = default.get_config()
      config.seed = seed
      config.model.transformer.update(overrides)
      workdir = root / name.replace(" + ", "_").replace(" ", "-") / f"seed_{seed}"
      accuracies.append(trainer.train_and_evaluate(config, str(workdir))["test"]["accuracy"])
    summary["variants"][name] = {"test_accuracy": accuracies, "mean": float(np.mean(accuracies)),
                                 "std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0}
  root.mkdir(parents=True, exist_ok=True)
  (root / "summary.json").write_text(json.dumps(summary, indent=2))
  print(f"\nListOps (default config), test accuracy over seeds {args.seeds}; majority class {majority:.3f}")
  for name, result in summary["variants"].items():
    print(f"  {name:<42} {result['mean']:.3f} ± {result['std']:.3f}")


if __name__ == "__main__":
  main()
