"""Evaluates a checkpoint of --workdir on the eval splits; writes DIR/eval/<step>.json (or, with --best,
DIR/eval/best_<step>.json). Read-only on the checkpoints: it can run beside the training.

    python eval.py [--workdir DIR] [--step N | --best] [--config.eval.splits=test]
    python eval.py --workdir DIR --attacks fgsm,pgd [--epsilons 1,2,4] [--attack_convention pixel]
    python eval.py --workdir DIR --attacks contamination [--contamination 0.015] [--replacement random]
    python eval.py --workdir DIR --eval_length 1024

The config is the one the run saved (DIR/config.json), with any --config.<field> overrides on top;
--config configs/x.py uses that file instead. Attacks (bilateral_jax/robustness.py says what each
perturbs and in which units) go into the JSON under `attacks` ({split: {attack: {ε: metrics}}}, with
their settings), into the printed table, and into DIR/eval/robustness.png. FGSM and PGD also report
`attack_success_rate`: the fraction of the examples correct when clean (`clean_correct`) that the attack
makes wrong; contamination also reports `uncontaminated_perplexity`, over the targets that are not tokens
of an inserted word (`uncontaminated_targets`). --eval_length N (language models): the eval text in
windows of N tokens, whatever the training context ("train short, test long"; refused for a learned
position table, whose rows end at the trained length); the JSON is DIR/eval/<step>_length_<N>.json.
"""
import dataclasses
import json

from absl import flags

from bilateral_jax import cli, plots, robustness, storage, tasks, trainer

flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest that restores).")
flags.DEFINE_bool("best", False, "Evaluate the best checkpoint by the training's validation metric.")
flags.DEFINE_integer("eval_length", None, "Language models: score the eval text in windows of this many tokens "
                     "(default: the training context, data.max_length).")
cli.define_attack_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  workdir, config = cli.open_run(argv)
  flags_ = cli.FLAGS
  task = tasks.get(config.model.name)
  attacks, settings = cli.attack_settings(task, config.seed)
  step, results, attacked = trainer.evaluate_checkpoint(config, workdir, flags_.step, flags_.best, attacks, settings,
                                                        eval_length=flags_.eval_length)
  length = "" if flags_.eval_length is None else f"_length_{flags_.eval_length}"
  out = storage.path(workdir) / "eval" / f"{'best_' if flags_.best else ''}{step}{length}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  record = {"step": step, "best": flags_.best, "results": results}
  if flags_.eval_length is not None:
    record["eval_length"] = flags_.eval_length
  if attacked:
    record |= {"attacks": attacked, "attack_settings": dataclasses.asdict(settings)}
  out.write_text(json.dumps(record, indent=2))
  names = sorted({name for metrics in results.values() for name in metrics})
  widths = {name: max(10, len(name)) for name in names}
  print(f"step {step:<5}" + "".join(f"  {name:>{widths[name]}}" for name in names))
  for split, metrics in results.items():
    print(f"{split:<10}" + "".join(f"  {cli.number(metrics[name]):>{widths[name]}}" for name in names))
  if attacked:
    metric = robustness.headline(task)
    convention = f", {settings.convention} convention" if task.inputs == "images" else ""
    print(f"\n{metric} under attack{convention}")
    series = {}
    for split, by_attack in attacked.items():
      for attack, (strengths, values) in robustness.curve(results[split], by_attack, metric).items():
        print(f"{split:<10} {attack:<13} " + "  ".join(f"{s:g}: {cli.number(v)}" for s, v in zip(strengths, values)))
        beside = robustness.companion(attack)
        shown = lambda value: "n/a" if value is None else cli.number(value)
        print(f"{'':<24} {beside} " + "  ".join(f"{strength}: {shown(r[beside])}"
                                                for strength, r in by_attack[attack].items()))
        series[f"{split} {attack}"] = (strengths, values, None)
    xlabel = "fraction of words swapped" if "contamination" in attacks else (
        "epsilon (1/255)" if task.inputs == "images" else "epsilon (x mean embedding norm)")
    plots.against(series, out.parent / "robustness.png", xlabel=xlabel, ylabel=metric,
                  title=f"step {step}{convention}")
  print(f"written to {out}")


if __name__ == "__main__":
  cli.run(main)
