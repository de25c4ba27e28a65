"""Evaluates a checkpoint of --workdir on the config's eval splits; writes DIR/eval/<step>.json (or,
with --best, DIR/eval/best_<step>.json).

    python eval.py [--config configs/x.py] [--workdir DIR] [--step N | --best]
"""
import json
import pathlib

from absl import app, flags

from bilateral_jax import cli, trainer

flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_bool("best", False, "Evaluate the best checkpoint by the training's validation metric.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = cli.set_up()
  flags_ = cli.FLAGS
  step, results = trainer.evaluate_checkpoint(flags_.config, workdir, flags_.step, flags_.best)
  out = pathlib.Path(workdir) / "eval" / f"{'best_' if flags_.best else ''}{step}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"step": step, "best": flags_.best, "results": results}, indent=2))
  names = sorted({name for metrics in results.values() for name in metrics})
  print(f"step {step}" + "".join(f"  {name:>10}" for name in names))
  for split, metrics in results.items():
    print(f"{split:<10}" + "".join(f"  {metrics[name]:>10.4f}" for name in names))
  print(f"written to {out}")


if __name__ == "__main__":
  app.run(main)
