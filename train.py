"""Trains the model a config describes, resuming from the latest checkpoint in --workdir.

    python train.py [--config configs/x.py] [--workdir DIR] [--config.train.num_steps=...]
"""
from absl import app

from bilateral_jax import cli, trainer


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = cli.set_up()
  final = trainer.train_and_evaluate(cli.FLAGS.config, workdir)
  for split, metrics in final.items():
    print(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
  app.run(main)
