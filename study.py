"""The paper's 2 x 2 study: standard attention or BSA x the standard residual or GRC, over seeds.

    python study.py --config configs/X.py --seeds 0,1,2 --workdir runs/study_X [--attacks fgsm,pgd]
        [--config.<field>=...] [attack flags as eval.py's]

Per variant and seed (the seed drives initialisation and shuffling; the data is the same) it trains
WORKDIR/<variant>/seed_<s> (train.py's loop: a run interrupted midway resumes from its checkpoint),
evaluates the final parameters on the eval splits and, on the last of them (the one the summary
reports), under the attacks that apply to the task (all of them unless --attacks says), and measures SNR and token uniformity per layer (diagnose.py's depth
diagnostics), then writes that run's `result.json`; a run with a `result.json` is done and not
retrained (evaluated again, from its checkpoint, when the attack or diagnostics flags changed). Then: WORKDIR/summary.json, summary.md (mean ± std over seeds per variant and metric, and
each modification against the baseline) and plots (curves.png, robustness.png, snr.png,
uniformity.png). One process, runs one after the other.
"""
import dataclasses
import json
import pathlib
import time

import jax
import numpy as np
from absl import app, flags

from bilateral_jax import cli, diagnostics, metric_writer, plots, robustness, tasks, trainer
from configs import common

flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, one run per variant and seed.")
flags.DEFINE_integer("examples", 64, "Examples of the first eval split for the depth diagnostics.")
flags.DEFINE_float("noise", 0.1, "Depth diagnostics: noise relative to the RMS of the stack's input.")
cli.define_attack_flags()
flags.adopt_module_key_flags(cli)

BASELINE = next(iter(common.ABLATION))


def slug(variant: str) -> str:
  return variant.replace(" + ", "_").replace(" ", "-")


def run_one(config, run_dir: pathlib.Path, attacks, settings) -> dict:
  """Trains (or resumes) one run, evaluates it, and writes its result.json."""
  start = time.perf_counter()
  final = trainer.train_and_evaluate(config, str(run_dir))
  trained = time.perf_counter() - start
  experiment, step, params = trainer.restore_params(config, str(run_dir))
  result = {"step": step, "results": final}
  split = experiment.config.eval.splits[-1]  # the attacks on the split the summary reports
  result["attacks"] = {split: robustness.evaluate(experiment, params, split, attacks, settings)} if attacks else {}
  inputs, mask = diagnostics.eval_inputs(experiment, cli.FLAGS.examples)
  result["depth"] = diagnostics.depth_profile(experiment.model, jax.device_get(params), inputs, mask,
                                              noise=cli.FLAGS.noise, seed=config.seed)
  result["seconds"] = {"train": trained, "total": time.perf_counter() - start}
  result["evaluated_with"] = evaluated_with(attacks, settings)
  partial = run_dir / "result.json.tmp"  # written whole, then renamed: an interruption leaves no half file
  partial.write_text(json.dumps(result, indent=2))
  partial.replace(run_dir / "result.json")
  return result


def evaluated_with(attacks, settings) -> dict:
  """What a run's evaluation depends on besides its checkpoint: a done run evaluated otherwise is redone."""
  return {"attacks": list(attacks), "attack_settings": dataclasses.asdict(settings) | {"epsilons": list(settings.epsilons)},
          "examples": cli.FLAGS.examples, "noise": cli.FLAGS.noise}


def _mean_std(values: list[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def scalars(result: dict, split: str, metric: str) -> dict[str, float]:
  """The numbers a run is summarised by: clean metrics of `split`, attacked `metric` per attack and
  strength, and SNR and token uniformity at the last layer."""
  out = {name: value for name, value in result["results"][split].items() if name != "examples"}
  for attack, by_strength in result["attacks"].get(split, {}).items():
    out |= {f"{attack} {strength}": values[metric] for strength, values in by_strength.items()}
  out["SNR dB (last layer)"] = result["depth"]["snr_db"][-1]
  out["uniformity (last layer)"] = result["depth"]["token_uniformity"][-1]
  return out


def summarize(results: dict[str, dict[int, dict]], split: str, metric: str) -> dict:
  """{variant: {seed: result}} -> {variant: {quantity: {mean, std, values}}} and each variant's
  difference from the baseline with its standard error."""
  summary = {}
  for variant, by_seed in results.items():
    per_seed = [scalars(result, split, metric) for result in by_seed.values()]
    summary[variant] = {name: dict(zip(("mean", "std"), _mean_std([s[name] for s in per_seed])),
                                   values=[s[name] for s in per_seed]) for name in per_seed[0]}
  for variant in results:
    for name, stats in summary[variant].items():
      base = summary[BASELINE][name]
      stats["difference"] = stats["mean"] - base["mean"]
      stats["standard_error"] = float(np.sqrt(stats["std"] ** 2 / len(stats["values"])
                                              + base["std"] ** 2 / len(base["values"])))
  return summary


def markdown(summary: dict, seeds: list[int], split: str, title: str) -> str:
  names = list(next(iter(summary.values())))
  lines = [f"# {title}", "", f"{split} split, mean ± std over seeds {', '.join(map(str, seeds))}.", "",
           "| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for variant, stats in summary.items():
    lines.append(f"| {variant} | " + " | ".join(f"{stats[n]['mean']:.4f} ± {stats[n]['std']:.4f}" for n in names) + " |")
  lines += ["", f"Difference from {BASELINE} (± its standard error; `*`: more than twice it):", "",
            "| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for variant, stats in list(summary.items())[1:]:
    cell = lambda s: f"{s['difference']:+.4f} ± {s['standard_error']:.4f}" + (
        " *" if abs(s["difference"]) > 2 * s["standard_error"] else "")
    lines.append(f"| {variant} | " + " | ".join(cell(stats[n]) for n in names) + " |")
  return "\n".join(lines) + "\n"


def mean_rows(runs: list[list[dict]]) -> list[dict]:
  """metrics.jsonl rows of several seeds -> their mean per split, step and quantity."""
  grouped: dict[tuple, list[dict]] = {}
  for rows in runs:
    for row in rows:
      grouped.setdefault((row["split"], row["step"]), []).append(row)
  out = []
  for (split, step), group in sorted(grouped.items(), key=lambda item: (item[0][1], item[0][0])):
    names = {name for row in group for name in row} - {"split", "step"}
    values = {name: [row[name] for row in group if row.get(name) is not None] for name in names}
    out.append({"split": split, "step": step} | {name: np.mean(v, axis=0).tolist() for name, v in values.items() if v})
  return out


def plot(root: pathlib.Path, results: dict, split: str, metric: str) -> None:
  plots.curves({variant: mean_rows([metric_writer.read(root / slug(variant) / f"seed_{seed}") for seed in by_seed])
                for variant, by_seed in results.items()}, root / "curves.png")
  attacked, depth = {}, {"snr_db": {}, "token_uniformity": {}}
  for variant, by_seed in results.items():
    runs = list(by_seed.values())
    curves = [robustness.curve(r["results"][split], r["attacks"].get(split, {}), metric) for r in runs]
    for attack, (strengths, _) in curves[0].items():
      values = np.asarray([curve[attack][1] for curve in curves])
      attacked[f"{variant}, {attack}"] = (strengths, values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else None)
    for name in depth:
      values = np.asarray([r["depth"][name] for r in runs])
      depth[name][variant] = (runs[0]["depth"]["layer"], values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else None)
  if attacked:
    plots.against(attacked, root / "robustness.png", xlabel="attack strength (0: clean)", ylabel=metric,
                  title=f"{split}: mean ± std over seeds")
  plots.against(depth["snr_db"], root / "snr.png", xlabel="layer (0 = embeddings)", ylabel="SNR (dB)")
  plots.against(depth["token_uniformity"], root / "uniformity.png", xlabel="layer (0 = embeddings)",
                ylabel="mean pairwise cosine")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  root = pathlib.Path(cli.set_up())
  base = cli.FLAGS.config
  task = tasks.get(base.model.name)
  seeds = [int(seed) for seed in cli.FLAGS.seeds]
  attacks, settings = cli.attack_settings(task, seed=0)
  attacks = attacks or task.attacks
  trainer.check_settings(base)
  split, metric = base.eval.splits[-1], robustness.headline(task)
  results: dict[str, dict[int, dict]] = {}
  for variant, overrides in common.ABLATION.items():
    results[variant] = {}
    for seed in seeds:
      run_dir = root / slug(variant) / f"seed_{seed}"
      done = run_dir / "result.json"
      if done.exists():
        result = json.loads(done.read_text())
        if result.get("evaluated_with") == evaluated_with(attacks, settings):
          print(f"{variant}, seed {seed}: done ({done})", flush=True)
          results[variant][seed] = result
          continue
        print(f"{variant}, seed {seed}: evaluated with other attacks or diagnostics settings; evaluating again",
              flush=True)
      print(f"\n=== {variant}, seed {seed} -> {run_dir}", flush=True)
      config = base.copy_and_resolve_references()
      config.seed = seed
      config.model.transformer.update(overrides)
      results[variant][seed] = run_one(config, run_dir, attacks, settings)
  summary = summarize(results, split, metric)
  seconds = sum(r["seconds"]["total"] for by_seed in results.values() for r in by_seed.values())
  record = {"config": cli.config_flags.get_config_filename(cli.FLAGS["config"]), "seeds": seeds, "split": split,
            "attacks": list(attacks), "attack_settings": dataclasses.asdict(settings), "seconds": seconds,
            "devices": f"{jax.device_count()} {jax.devices()[0].platform}", "variants": summary}
  (root / "summary.json").write_text(json.dumps(record, indent=2))
  text = markdown(summary, seeds, split, f"Study of {record['config']}") + (
      f"\nWall time of all runs (train, evaluation, attacks, diagnostics): {seconds / 60:.1f} min on "
      f"{record['devices']}.\n")
  (root / "summary.md").write_text(text)
  plot(root, results, split, metric)
  print("\n" + text + f"\nwritten to {root}")


if __name__ == "__main__":
  cli.run(main)
