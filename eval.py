"""Evaluates a checkpoint of --workdir on the eval splits; writes DIR/eval/<step>.json (or, with --best,
DIR/eval/best_<step>.json). Read-only on the checkpoints: it can run beside the training.

    python eval.py [--workdir DIR] [--step N | --best] [--config.eval.splits=test]

The config is the one the run saved (DIR/config.json), with any --config.<field> overrides on top;
--config configs/x.py uses that file instead.
"""
import json
import pathlib

from absl import app, flags

from bilateral_jax import cli, trainer

flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest that restores).")
flags.DEFINE_bool("best", False, "Evaluate the best checkpoint by the training's validation metric.")
flags.adopt_module_key_flags(cli)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = cli.set_up()
  flags_ = cli.FLAGS
  step, results = trainer.evaluate_checkpoint(cli.run_config(workdir), workdir, flags_.step, flags_.best)
  out = pathlib.Path(workdir) / "eval" / f"{'best_' if flags_.best else ''}{step}.json"
  out.parent.mkdir(exist_ok=True)
  out.write_text(json.dumps({"step": step, "best": flags_.best, "results": results}, indent=2))
  names = sorted({name for metrics in results.values() for name in metrics})
  print(f"step {step:<5}" + "".join(f"  {name:>10}" for name in names))
  for split, metrics in results.items():
    print(f"{split:<10}" + "".join(f"  {cli.number(metrics[name]):>10}" for name in names))
  print(f"written to {out}")


if __name__ == "__main__":
  cli.run(main)
