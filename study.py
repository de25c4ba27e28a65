"""A study: named variants of one config (name -> config overrides), each over seeds, and their comparison.

    python study.py --config configs/X.py --workdir runs/study_X [--variants studies/Y.py] [--variant NAME ...]
        [--baseline NAME] [--seeds 0,1,2,3,4] [--nopaired] [--attacks fgsm,pgd] [--config.<field>=...]
        [attack flags as eval.py's] [--evaluation NAME] [--transfer] [--eval_lengths 64,256,1024]

A masking check (docs/method.md section 4) of a finished study, in its own files beside the study's:
    python study.py ... --evaluation masking --attacks pgd --pgd_steps 100 --pgd_restarts 5 \
        --epsilons 8,16,32,64 --transfer

--variants: a study file (`bilateral_jax/comparisons.py`): Python defining `VARIANTS = {name: {key: value}}` (its
docstring says the command and what it measures) or a JSON object of the same; a key is a dotted config
path (`model.pooling`) or a TransformerConfig field (`attention` = `model.transformer.attention`). The
first variant is the baseline (--baseline NAME: another of its variants; the finished runs are compared
with it, in WORKDIR/against_NAME/). Default: the paper's 2 x 2
(`configs/common.py` ABLATION: standard attention or BSA x the standard residual or GRC). --variant NAME
(repeatable): run only these variants (the baseline always runs). Every variant's config is built and
checked before anything trains: an unknown key or a bad value stops the study at once.

Per variant and seed (the seed drives initialisation and shuffling; the data is the same) it trains
WORKDIR/<variant>/seed_<s> (train.py's loop: a run interrupted midway resumes from its checkpoint),
evaluates the final parameters on the eval splits and, on the last of them (the one the summary
reports), under the attacks that apply to the task (all of them unless --attacks says; with the attack's
success rate on the examples correct when clean, and for contamination the perplexity over the
uncontaminated targets), scores a language model's text at each of --eval_lengths (eval.py
--eval_length) and measures its long-range stability there (diagnose.py --long_range), and measures SNR and token uniformity per layer (diagnose.py's depth diagnostics; the
Segmenter's decoder apart) and records BSA's learned bandwidths, then writes that run's `result.json`;
a run with a `result.json` is done and not retrained (evaluated again, from its checkpoint, when the
attack or diagnostics settings changed; a run trained with other settings, of its variant or of the base
config, is refused). An interrupted study continues where it stopped. Then: WORKDIR/summary.json, summary.md (mean ± std over seeds per variant and
quantity, and each variant's parameter count; each variant's difference from the baseline with its 95%
confidence interval and p-value, paired by seed by default (every variant runs the same seeds, and a seed
fixes the data order and the initialisation seed), Welch's t-test with --nopaired; a difference holds only
on the study file's PRIMARY quantity (default: the task's headline metric), when its Holm-adjusted
p-value over the comparisons with the baseline is below 0.05 with >= 5 seeds per variant; the other
quantities are secondary) and plots (curves.png, robustness.png, snr.png, uniformity.png, grc_t.png:
the learned GRC t per layer, and with --eval_lengths lengths.png and long_range.png). summary.json records the commit, the per-seed values and the split of
the depth diagnostics (the first eval split). One process, runs one after the other.
"""
import dataclasses
import json
import re
import time

import jax
import numpy as np
from absl import app, flags
from etils import epath

from bilateral_jax import (cli, comparisons, diagnostics, experiments, metric_writer, plots, robustness, runs, steps,
                           storage, tasks, trainer)
from bilateral_jax.data import core, sources
from configs import common

flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, one run per variant and seed.")
flags.DEFINE_integer("examples", 64, "Examples of the first eval split for the depth diagnostics.")
flags.DEFINE_float("noise", 0.1, "Depth diagnostics: noise relative to the RMS of the stack's Y_0.")
flags.DEFINE_string("variants", None, "Study file (.py defining VARIANTS, or .json): name -> config overrides, the "
                    "baseline first; default: the 2 x 2 of configs/common.py ABLATION.")
flags.DEFINE_multi_string("variant", [], "Run only this variant of the study (repeatable); the baseline always runs.")
flags.DEFINE_string("baseline", None, "The variant every other is compared with (default: the study's first).")
flags.DEFINE_string("evaluation", "", "Name another evaluation of the study's runs (e.g. a masking check with other "
                    "attack settings): each run's result_NAME.json, and evaluation_NAME/ for the summary and plots; "
                    "the study's own results stay as they are. Default: the study's own (result.json).")
flags.DEFINE_bool("transfer", False, "Also attack each variant with FGSM/PGD perturbations crafted on the "
                  "baseline's run of the same seed (transfer attacks; image tasks).")
flags.DEFINE_list("eval_lengths", [], "Language models: also score the summary's split in windows of each of these "
                  "lengths (eval.py --eval_length; train short, test long): `perplexity at N` per run, and "
                  "lengths.png.")
flags.DEFINE_bool("paired", True, "Compare each variant with the baseline by a t-test paired by seed (--nopaired: "
                  "Welch's t-test).")
cli.define_attack_flags()
flags.adopt_module_key_flags(cli)

ABLATION = comparisons.Study(dict(common.ABLATION), "The paper's 2 x 2: standard attention or BSA x the standard "
                         "residual or GRC.", "configs/common.py ABLATION")
MEASUREMENTS = 3  # the version of the evaluation's definitions (docs/method.md section 4): older results are redone


def slug(variant: str) -> str:
  """A variant's directory name."""
  return re.sub(r"[^A-Za-z0-9._=-]+", "-", variant.replace(" + ", "_")).strip("-")


def trained_otherwise(run_dir: epath.Path, config) -> dict:
  """The fields that decide a finished run's result (seed, model, data, optimiser, steps and batch) that
  differ between how `run_dir` was trained and `config`: {field: (then, now)}."""
  saved = runs.load_config(run_dir)
  if saved is None:
    return {}
  decisive = lambda field: field.split(".")[0] in ("seed", "model", "data", "optimizer") or field in (
      "train.num_steps", "train.batch_size", "train.grad_accum_steps")
  from_data = lambda field, now: field.removeprefix("model.") in core.MODEL_SIZES and now == 0  # filled as then
  return {field: (then, now) for field, (then, now) in runs.changes(saved, config).items()
          if decisive(field) and not field.endswith((".attention_path", ".remat"))  # same numbers
          and not from_data(field, now)}


def result_file(run_dir: epath.Path) -> epath.Path:
  """Where a run's result of this evaluation (--evaluation) is written."""
  return run_dir / (f"result_{cli.FLAGS.evaluation}.json" if cli.FLAGS.evaluation else "result.json")


def run_one(config, run_dir: epath.Path, attacks, settings, overrides: dict, source_dir: epath.Path | None) -> dict:
  """Trains (or resumes) one run, evaluates it (under transfer attacks crafted on the run in `source_dir`
  too, when given), and writes its result file."""
  start = time.perf_counter()
  final = trainer.train_and_evaluate(config, str(run_dir))
  trained = time.perf_counter() - start
  if (run_dir / "result.json").exists():  # trained before, evaluated again: the training's own time
    trained = json.loads((run_dir / "result.json").read_text())["seconds"]["train"]
  evaluating = time.perf_counter()
  data = sources.describe_eval(config)
  experiment, step, params = trainer.restore_params(config, str(run_dir), data)
  result = {"step": step, "results": final}
  split = experiment.config.eval.splits[-1]  # the attacks on the split the summary reports
  result["attacks"] = {split: robustness.evaluate(experiment, params, split, attacks, settings)} if attacks else {}
  if source_dir is not None:
    source, _, source_params = trainer.restore_params(runs.load_config(source_dir), str(source_dir), data)
    crafted = tuple(attack for attack in attacks if attack in robustness.IMAGE_ATTACKS)
    result["transfer"] = {split: robustness.evaluate(experiment, params, split, crafted, settings,
                                                     crafted_by=(source.model, source_params))}
  result["lengths"] = {split: {str(length): at_length(config, data, params, split, int(length))
                               for length in cli.FLAGS.eval_lengths}} if cli.FLAGS.eval_lengths else {}
  if cli.FLAGS.eval_lengths:  # on the depth diagnostics' split (the first), as diagnose.py --long_range
    sensitivity = diagnostics.sensitivity_at_lengths(config, jax.device_get(params), cli.FLAGS.eval_lengths,
                                                     examples=cli.FLAGS.examples, seed=config.seed)
    result["long_range"] = {"split": experiment.config.eval.splits[0], "examples": cli.FLAGS.examples,
                            "sensitivity": dict(zip(cli.FLAGS.eval_lengths, sensitivity))}
  inputs = diagnostics.eval_inputs(experiment, cli.FLAGS.examples)
  result["depth"] = diagnostics.depth_profile(experiment.model, jax.device_get(params), inputs,
                                              noise=cli.FLAGS.noise, seed=config.seed)
  result["depth"]["split"] = experiment.config.eval.splits[0]  # where eval_inputs reads
  result["parameters"] = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
  result["grc_t"] = grc_t(params)
  result["bandwidths"] = {name: [float(h) for h in np.ravel(value)]  # BSA's learned h_y, h_p per layer and head
                          for name, value in trainer.to_host(steps.parameter_summaries(params)).items()
                          if name.startswith(("h_y", "h_p"))}
  evaluated = time.perf_counter() - evaluating
  result["seconds"] = {"train": trained, "evaluation": evaluated, "total": trained + evaluated}
  result["seconds_per_step"] = seconds_per_step(run_dir)
  result["evaluated_with"] = evaluated_with(attacks, settings)
  result["overrides"] = as_json(overrides)
  storage.write_whole(result_file(run_dir), json.dumps(result, indent=2))  # an interruption leaves no half file
  return result


def seconds_per_step(run_dir: epath.Path) -> float | None:
  """A train step's time: the median over the logged intervals after the first (the start-up)."""
  rates = [row["steps_per_s"] for row in metric_writer.read(run_dir) if "steps_per_s" in row][1:]
  return float(np.median([1.0 / rate for rate in rates])) if rates else None


def at_length(config, data, params, split: str, length: int) -> dict:
  """A language model's metrics of `split` scored in windows of `length` tokens with `params`."""
  return experiments.Experiment(experiments.at_eval_length(config, length), data).evaluate(params, split)


def grc_t(params) -> dict[str, list[float]]:
  """The learned GRC t per sublayer and layer (the mean over channels when per channel): {sublayer: [t_0, ..]}."""
  by_sublayer: dict[str, dict[int, float]] = {}
  for name, value in trainer.to_host(steps.parameter_summaries(params)).items():
    if name.startswith("t_"):
      sublayer, block = name[2:].split("/")
      by_sublayer.setdefault(sublayer, {})[int(block.removeprefix("block_"))] = value
  return {sublayer: [t for _, t in sorted(layers.items())] for sublayer, layers in by_sublayer.items()}


def evaluated_with(attacks, settings) -> dict:
  """What a run's evaluation depends on besides its checkpoint: a done run evaluated otherwise is redone."""
  return {"attacks": list(attacks), "attack_settings": dataclasses.asdict(settings) | {"epsilons": list(settings.epsilons)},
          "examples": cli.FLAGS.examples, "noise": cli.FLAGS.noise, "measurements": MEASUREMENTS,
          "transfer": cli.FLAGS.transfer, "eval_lengths": [int(length) for length in cli.FLAGS.eval_lengths]}


def as_json(value):
  """`value` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


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


def plot(root: epath.Path, out: epath.Path, results: dict, split: str, metric: str) -> None:
  """The study's plots of the runs under `root`, into `out`."""
  plots.curves({variant: mean_rows([metric_writer.read(root / slug(variant) / f"seed_{seed}") for seed in by_seed])
                for variant, by_seed in results.items()}, out / "curves.png")
  attacked, depth, learned_t, by_length, sensitivity = {}, {"snr_db": {}, "token_uniformity": {}}, {}, {}, {}
  spread = lambda values: values.std(0, ddof=1) if len(values) > 1 else None
  for variant, by_seed in results.items():
    runs = list(by_seed.values())
    curves = [robustness.curve(r["results"][split], r["attacks"].get(split, {}), metric) for r in runs]
    for attack, (strengths, _) in curves[0].items():
      values = np.asarray([curve[attack][1] for curve in curves])
      attacked[f"{variant}, {attack}"] = (strengths, values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else None)
    for name in depth:
      for suffix, profiles in (("", [r["depth"] for r in runs]),
                               (" (decoder)", [r["depth"].get("decoder") for r in runs])):
        if profiles[0] is not None:
          values = np.asarray([profile[name] for profile in profiles])
          depth[name][variant + suffix] = (profiles[0]["layer"], values.mean(0), spread(values))
    if runs[0].get("lengths", {}).get(split):
      lengths = sorted(runs[0]["lengths"][split], key=int)
      values = np.asarray([[r["lengths"][split][length][metric] for length in lengths] for r in runs])
      by_length[variant] = ([int(length) for length in lengths], values.mean(0), spread(values))
    if all("long_range" in r for r in runs):
      lengths = sorted(runs[0]["long_range"]["sensitivity"], key=int)
      values = np.asarray([[r["long_range"]["sensitivity"][length] for length in lengths] for r in runs])
      sensitivity[variant] = ([int(length) for length in lengths], values.mean(0), spread(values))
    for sublayer in set.intersection(*(set(r.get("grc_t", {})) for r in runs)):
      values = np.asarray([r["grc_t"][sublayer] for r in runs])
      learned_t[f"{variant}, {sublayer}"] = (list(range(values.shape[1])), values.mean(0), spread(values))
  if attacked:
    plots.against(attacked, out / "robustness.png", xlabel="attack strength (0: clean)", ylabel=metric,
                  title=f"{split}: mean ± std over seeds")
  plots.against(depth["snr_db"], out / "snr.png", xlabel="layer (0 = Y_0)", ylabel="SNR (dB)")
  plots.against(depth["token_uniformity"], out / "uniformity.png", xlabel="layer (0 = Y_0)",
                ylabel="mean pairwise cosine (standardised)")
  if learned_t:
    plots.against(learned_t, out / "grc_t.png", xlabel="layer", ylabel="learned GRC t")
  if by_length:
    plots.against(by_length, out / "lengths.png", xlabel="evaluation length (tokens)", ylabel=metric, log_x=True,
                  title=f"{split}: mean ± std over seeds")
  if sensitivity:
    plots.against(sensitivity, out / "long_range.png", xlabel="length N (tokens)", log_x=True,
                  ylabel="relative output change / relative input change",
                  title="last attention output under a 1e-3 perturbation of Y_0")


def variant_configs(base, study: comparisons.Study) -> dict:
  """Every variant's config, each checked as train.py would before anything trains."""
  configs = {}
  for variant, overrides in study.variants.items():
    config = comparisons.variant_config(base, variant, overrides)
    try:
      experiments.check_settings(config)
    except ValueError as error:
      raise ValueError(f"study variant {variant!r}: {error}") from None
    configs[variant] = config
  directories = [slug(variant) for variant in configs]
  if len(set(directories)) < len(directories):
    raise ValueError(f"study variants {', '.join(map(repr, configs))} share directory names {directories}: rename them")
  return configs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  commit = runs.commit()  # the code the runs are trained with, read before anything changes it
  root = storage.path(cli.set_up())
  base = cli.FLAGS.config
  task = tasks.get(base.model.name)
  seeds = [int(seed) for seed in cli.FLAGS.seeds]
  attacks, settings = cli.attack_settings(task, seed=0)
  attacks = attacks or task.attacks
  if cli.FLAGS.transfer and task.inputs != "images":
    raise ValueError(f"--transfer: transfer attacks need image inputs, and {base.model.name!r} reads {task.inputs}")
  study = comparisons.load(cli.FLAGS.variants) if cli.FLAGS.variants else ABLATION
  own_baseline = study.baseline
  study = comparisons.select(study, cli.FLAGS.variant, cli.FLAGS.baseline)
  out = root / f"evaluation_{cli.FLAGS.evaluation}" if cli.FLAGS.evaluation else root
  if study.baseline != own_baseline:  # a comparison of the same runs with another variant: files of its own
    out = out / f"against_{slug(study.baseline)}"
  configs = variant_configs(base, study)
  at = re.fullmatch(r".+ at (\d+)", study.primary or "")
  if at and at.group(1) not in cli.FLAGS.eval_lengths:
    raise ValueError(f"the study's primary quantity {study.primary!r} needs --eval_lengths to include {at.group(1)}")
  split, metric = base.eval.splits[-1], robustness.headline(task)
  results: dict[str, dict[int, dict]] = {}
  for variant, variant_config in configs.items():
    results[variant] = {}
    overrides = study.variants[variant]
    for seed in seeds:
      run_dir = root / slug(variant) / f"seed_{seed}"
      done = result_file(run_dir)
      source_dir = (root / slug(study.baseline) / f"seed_{seed}" if cli.FLAGS.transfer and variant != study.baseline
                    else None)
      config = variant_config.copy_and_resolve_references()
      config.seed = seed
      if done.exists():
        result = json.loads(done.read_text())
        changed = trained_otherwise(run_dir, config)
        if changed:
          raise ValueError(f"{run_dir} was trained as variant {variant!r} with other settings ("
                           + "; ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in changed.items())
                           + "): rename the variant, or use another --workdir")
        if result.get("evaluated_with") == evaluated_with(attacks, settings):
          print(f"{variant}, seed {seed}: done ({done})", flush=True)
          results[variant][seed] = result
          continue
        print(f"{variant}, seed {seed}: evaluated with other attacks or diagnostics settings; evaluating again",
              flush=True)
      print(f"\n=== {variant}, seed {seed} -> {run_dir}", flush=True)
      results[variant][seed] = run_one(config, run_dir, attacks, settings, overrides, source_dir)
  per_seed = {variant: {seed: comparisons.run_scalars(result, split, metric) for seed, result in by_seed.items()}
              for variant, by_seed in results.items()}
  primary = study.primary or metric
  summary = comparisons.summarize(per_seed, primary=primary, paired=cli.FLAGS.paired)
  parameters = {variant: next(iter(by_seed.values()))["parameters"] for variant, by_seed in results.items()}
  depth_split = next(iter(next(iter(results.values())).values()))["depth"]["split"]
  seconds = sum(r["seconds"]["total"] for by_seed in results.values() for r in by_seed.values())
  record = {"config": cli.config_flags.get_config_filename(cli.FLAGS["config"]), "study": study.source,
            "description": study.description, "baseline": study.baseline, "overrides": study.variants,
            "commit": commit, "primary": primary, "parameters": parameters,
            "seeds": seeds, "paired": cli.FLAGS.paired, "split": split, "depth_split": depth_split,
            "attacks": list(attacks),
            "attack_settings": dataclasses.asdict(settings), "seconds": seconds,
            "devices": f"{jax.device_count()} {jax.devices()[0].platform}", "variants": summary}
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.json").write_text(json.dumps(record, indent=2))
  text = comparisons.markdown(summary, title=f"Study of {record['config']} ({study.source})", split=split, seeds=seeds,
                             primary=primary, parameters=parameters, description=study.description) + (
      f"\nSNR and uniformity: the first {cli.FLAGS.examples} examples of the {depth_split} split. Wall time of all "
      f"runs (train, evaluation, attacks, diagnostics): {seconds / 60:.1f} min on {record['devices']}; commit "
      f"{record['commit']}.\n")
  (out / "summary.md").write_text(text)
  plot(root, out, results, split, metric)
  print("\n" + text + f"\nwritten to {out}")


if __name__ == "__main__":
  cli.run(main)
