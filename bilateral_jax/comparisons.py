"""Named variants of one config (a study file), and the paired statistics that compare them (docs/method.md section 4).

A study file is Python, defining `VARIANTS` (and a docstring saying its command and what it measures),
or JSON (one object): an ordered mapping name -> {config key: value}. A key is a dotted path into the
config (`model.pooling`, `model.transformer.attention`) or a plain `TransformerConfig` field name, which
means `model.transformer.<field>`. The first variant is the baseline.

Each variant is compared with the baseline quantity by quantity (`compare`): the difference of the means,
its 95% confidence interval and two-sided p-value, by a t-test paired by seed (the default when both ran
the same seeds: a seed fixes the data order and the initialisation seed of every variant) or by Welch's
t-test (Welch-Satterthwaite degrees of freedom). A difference `holds` only when its interval excludes 0
and both variants ran at least `MIN_SEEDS_FOR_A_CLAIM` seeds.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import runpy

import ml_collections
import numpy as np
from scipy import stats

from bilateral_jax import robustness

MIN_SEEDS_FOR_A_CLAIM = 5
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Study:
  """variants: name -> config overrides, the baseline first; description: what the study measures;
  source: where the variants come from; primary: the quantity named in advance on which a difference
  "holds" (Holm over the comparisons with the baseline; None: the task's headline metric)."""
  variants: dict[str, dict]
  description: str = ""
  source: str = ""
  primary: str | None = None

  @property
  def baseline(self) -> str:
    return next(iter(self.variants))


def load(path: str | pathlib.Path) -> Study:
  """A study file (.py with VARIANTS, or .json) -> its Study."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"study file {path} does not exist")
  if path.suffix == ".py":
    namespace = runpy.run_path(str(path))
    if "VARIANTS" not in namespace:
      raise ValueError(f"study file {path} defines no VARIANTS")
    variants, description, primary = namespace["VARIANTS"], namespace.get("__doc__") or "", namespace.get("PRIMARY")
  elif path.suffix == ".json":
    try:
      variants, description, primary = json.loads(path.read_text()), "", None
    except json.JSONDecodeError as error:
      raise ValueError(f"study file {path} is not valid JSON: {error}") from None
  else:
    raise ValueError(f"study file {path} must be .py (defining VARIANTS) or .json")
  if not isinstance(variants, dict) or not variants:
    raise ValueError(f"study file {path}: the variants must be a non-empty mapping name -> config overrides")
  for name, overrides in variants.items():
    if not isinstance(name, str) or not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
      raise ValueError(f"study file {path}: variant {name!r} must map a name to {{config key: value}}")
  if primary is not None and not isinstance(primary, str):
    raise ValueError(f"study file {path}: PRIMARY must name one quantity, got {primary!r}")
  return Study(dict(variants), description.strip(), str(path), primary)


def select(study: Study, names, baseline: str | None = None) -> Study:
  """The study's variants named in `names` (all when empty), in the study's order, with `baseline` (default:
  the study's first variant) moved first; the baseline always stays, as every difference is taken against it."""
  unknown = [name for name in [*names, *([baseline] if baseline else [])] if name not in study.variants]
  if unknown:
    raise ValueError(f"--variant/--baseline {', '.join(map(repr, unknown))} not in {study.source or 'the study'}; "
                     "its variants: " + ", ".join(map(repr, study.variants)))
  baseline = baseline or study.baseline
  kept = [baseline] + [name for name in study.variants if name != baseline and (not names or name in names)]
  return dataclasses.replace(study, variants={name: study.variants[name] for name in kept})


def config_key(key: str) -> str:
  """A study key -> its dotted path in the config (a plain name is a TransformerConfig field)."""
  return key if "." in key else f"model.transformer.{key}"


def variant_config(base: ml_collections.ConfigDict, name: str, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `base` with variant `name`'s overrides; an unknown key or a value of the wrong type is a
  ValueError naming the variant and the key."""
  config = base.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, field = config_key(key).split(".")
    node = config
    for part in parents + [field]:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f"study variant {name!r}: unknown config key {key!r} (no config.{config_key(key)})")
      parent, node = node, node[part]
    value = tuple(value) if isinstance(node, tuple) and isinstance(value, list) else value  # JSON has lists
    try:
      parent[field] = value
    except (TypeError, ValueError) as error:
      raise ValueError(f"study variant {name!r}: {key}={value!r}: {error}") from None
  return config


def run_scalars(result: dict, split: str, metric: str) -> dict[str, float | None]:
  """The numbers a run is summarised by: clean metrics of `split`, and `metric` on the other eval splits
  (`validation accuracy`: where a default is chosen); per attack and strength the attacked
  `metric` and beside it the attack's success rate on the clean-correct examples (or, contamination, the
  perplexity over the uncontaminated targets), the same for transfer attacks (`transferred`), `metric`
  at each evaluation length (`perplexity at 1024`: study.py --eval_lengths) and the long-range stability
  there (`attention sensitivity at 1024`, on the first eval split); the SNR of
  the readout vector (CLS pooling) and SNR and token uniformity at the last layer the readout reads (`diagnostics.depth_profile`: L - 1 with CLS
  pooling, else L); the decoder's at its last layer, for the Segmenter; a train step's seconds (the
  median logged interval after the first, on the machine that trained it)."""
  out = {name: value for name, value in result["results"][split].items() if name != "examples"}
  out |= {f"{other} {metric}": metrics[metric] for other, metrics in result["results"].items() if other != split}
  for attack, by_strength in result["attacks"].get(split, {}).items():
    beside = robustness.companion(attack)
    label = "uncontaminated perplexity" if beside == "uncontaminated_perplexity" else "success rate"
    for strength, values in by_strength.items():
      out |= {f"{attack} {strength}": values[metric], f"{attack} {strength} {label}": values.get(beside)}
  for length, metrics in result.get("lengths", {}).get(split, {}).items():
    out[f"{metric} at {length}"] = metrics[metric]
  for length, value in result.get("long_range", {}).get("sensitivity", {}).items():
    out[f"attention sensitivity at {length}"] = value
  for attack, by_strength in result.get("transfer", {}).get(split, {}).items():
    for strength, values in by_strength.items():
      out |= {f"{attack} {strength} transferred": values[metric],
              f"{attack} {strength} transferred success rate": values["attack_success_rate"]}
  depth = result["depth"]
  read = depth["read_layer"]
  if depth["readout_snr_db"] is not None:
    out["SNR dB (readout)"] = depth["readout_snr_db"]
  out[f"SNR dB (layer {read})"] = depth["snr_db"][read]
  out[f"uniformity (layer {read})"] = depth["token_uniformity"][read]
  if "decoder" in depth:
    out["decoder SNR dB (last layer)"] = depth["decoder"]["snr_db"][-1]
    out["decoder uniformity (last layer)"] = depth["decoder"]["token_uniformity"][-1]
  if result.get("seconds_per_step") is not None:
    out["seconds per step"] = result["seconds_per_step"]
  return out


def compare(values: dict[int, float], baseline: dict[int, float], *, paired: bool = True) -> dict:
  """Per-seed values of a variant and of the baseline ({seed: value}) -> {test, difference, ci95 ([low,
  high]), p_value, df, seed_count}: the difference of the means, its `CONFIDENCE` interval and two-sided
  p-value by a paired t-test over the seeds (when `paired` and both ran exactly the same seeds) or Welch's
  t-test; ci95, p_value and df are None with fewer than 2 seeds on a side (2 pairs when paired)."""
  seeds = min(len(values), len(baseline))
  if paired and set(values) == set(baseline):
    d = np.asarray([values[s] - baseline[s] for s in sorted(values)], np.float64)
    test, difference = "paired t", float(np.mean(d))
    se, df = (float(np.std(d, ddof=1) / math.sqrt(len(d))), len(d) - 1.0) if len(d) > 1 else (None, None)
  else:
    a, b = (np.asarray(list(v.values()), np.float64) for v in (values, baseline))
    test, difference = "Welch t", float(np.mean(a) - np.mean(b))
    se = df = None
    if len(a) > 1 and len(b) > 1:
      va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
      se = float(math.sqrt(va + vb))
      df = float((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))) if se > 0 else None
  out = {"test": test, "difference": difference, "ci95": None, "p_value": None, "df": df, "seed_count": seeds}
  if se is None:
    return out
  if se == 0:  # every seed gave the same difference
    return out | {"ci95": [difference, difference], "p_value": 1.0 if difference == 0 else 0.0}
  half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
  p_value = float(2 * stats.t.sf(abs(difference) / se, df))
  return out | {"ci95": [difference - half, difference + half], "p_value": p_value}


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
  """Holm's step-down adjustment of a family of p-values ({name: p}; None: not tested, left out) ->
  {name: adjusted p}: the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
  tested = sorted((p, name) for name, p in p_values.items() if p is not None)
  adjusted, running = {}, 0.0
  for rank, (p, name) in enumerate(tested):
    running = max(running, min(1.0, (len(tested) - rank) * p))
    adjusted[name] = running
  return {name: adjusted.get(name) for name in p_values}


def verdict(comparison: dict, *, primary: bool = True) -> str:
  """On the primary quantity: `holds` (the Holm-adjusted p-value, `p_holm` (the uncorrected one when
  absent), is below 1 - CONFIDENCE, with >= MIN_SEEDS_FOR_A_CLAIM seeds), `excludes 0, not after Holm`,
  `excludes 0, too few seeds`, `includes 0`, or `n/a` (no interval: one seed). On a secondary quantity
  (primary=False) nothing holds: `excludes 0 (secondary)` or the same others, uncorrected."""
  if comparison["ci95"] is None:
    return "n/a"
  low, high = comparison["ci95"]
  if low <= 0 <= high:
    return "includes 0"
  if comparison["seed_count"] < MIN_SEEDS_FOR_A_CLAIM:
    return "excludes 0, too few seeds"
  if not primary:
    return "excludes 0 (secondary)"
  return "holds" if comparison.get("p_holm", comparison["p_value"]) < 1 - CONFIDENCE else "excludes 0, not after Holm"


def summarize(per_seed: dict[str, dict[int, dict[str, float | None]]], *, primary: str, paired: bool = True) -> dict:
  """{variant: {seed: {quantity: value}}} (the baseline first; None: not measured) -> {variant: {quantity:
  {mean, std, values, seeds} and, for each variant but the baseline, its `compare` with the baseline and
  `verdict`}}; the `primary` quantity's comparisons also carry `p_holm`, Holm's adjustment over the
  variants compared with the baseline."""
  baseline = next(iter(per_seed))
  names = list(dict.fromkeys(name for by_seed in per_seed.values() for row in by_seed.values() for name in row))
  if primary not in names:
    raise ValueError(f"the primary quantity {primary!r} is not among those measured: {', '.join(names)}")
  measured = lambda variant, name: {seed: row[name] for seed, row in per_seed[variant].items()
                                    if row.get(name) is not None}
  summary = {}
  for variant in per_seed:
    summary[variant] = {}
    for name in names:
      values = measured(variant, name)
      array = np.asarray(list(values.values()), np.float64)
      stats_ = {"mean": float(np.mean(array)) if len(array) else None,
                "std": float(np.std(array, ddof=1)) if len(array) > 1 else 0.0 if len(array) else None,
                "values": list(values.values()), "seeds": list(values)}
      base = measured(baseline, name)
      if variant != baseline and values and base:
        stats_ |= compare(values, base, paired=paired)
      summary[variant][name] = stats_
  compared = [variant for variant in summary if "difference" in summary[variant][primary]]
  adjusted = holm({variant: summary[variant][primary]["p_value"] for variant in compared})
  for variant in compared:
    summary[variant][primary]["p_holm"] = adjusted[variant]
  for variant in summary:
    for name, stats_ in summary[variant].items():
      if "difference" in stats_:
        stats_["verdict"] = verdict(stats_, primary=name == primary)
  return summary


def _signed(value: float) -> str:
  return f"{value:+.4f}"


SNR_NOTE = ("SNR noises Y_0 after any added position table: positions read outside the token stream (RoPE, "
            "ALiBi, BSA's spatial term, TUPE's features) are not noised, an added table is (docs/method.md "
            "section 4).")


def markdown(summary: dict, *, title: str, split: str, seeds: list[int], primary: str,
             parameters: dict[str, int] | None = None, description: str = "") -> str:
  """summary.md: the means ± std per variant and quantity (and each variant's parameter count), then each
  variant's differences from the baseline with their intervals, p-values (Holm-adjusted beside the
  primary quantity's) and verdicts."""
  variants = list(summary)
  baseline = variants[0]
  names = list(next(iter(summary.values())))
  lines = [f"# {title}", ""]
  if description:
    lines += [description.split("\n\n")[0].strip(), ""]
  lines += [f"{split} split; seeds {', '.join(map(str, seeds))} for every variant; baseline: {baseline}; "
            f"primary quantity: {primary} (the others are secondary: uncorrected, nothing holds on them).", ""]
  if len(seeds) < MIN_SEEDS_FOR_A_CLAIM:
    lines += [f"**{len(seeds)} seed{'s' if len(seeds) != 1 else ''} per variant: not enough for a claim** (a claim "
              f"needs >= {MIN_SEEDS_FOR_A_CLAIM} seeds per variant and a 95% confidence interval that excludes 0).", ""]
  cell = lambda s: "n/a" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}"
  counts = parameters or {}
  lines += ["## Mean ± std over seeds", "", "| variant | parameters | " + " | ".join(names) + " |",
            "|---" * (len(names) + 2) + "|"]
  count = lambda variant: f"{counts[variant]:,}" if variant in counts else "n/a"
  lines += [f"| {variant} | {count(variant)} | " + " | ".join(cell(summary[variant][n]) for n in names) + " |"
            for variant in variants]
  if any(name.startswith("SNR") for name in names):
    lines += ["", SNR_NOTE]
  tests = sorted({s["test"] for v in variants[1:] for s in summary[v].values() if "test" in s})
  lines += ["", f"## Difference from {baseline}", "",
            "Difference of the means, its 95% confidence interval and two-sided p-value "
            f"({' / '.join(tests) or 'no test'}; paired t: by seed, df = seeds - 1; Welch t: Welch-Satterthwaite df). "
            f"`holds` (the primary quantity, {primary}, only): its Holm-adjusted p-value over the "
            f"{len(variants) - 1} comparisons with the baseline is below {1 - CONFIDENCE:.2f} with "
            f">= {MIN_SEEDS_FOR_A_CLAIM} seeds per variant.", "",
            "| variant | quantity | difference | 95% CI | p | p (Holm) | verdict |", "|---|---|---|---|---|---|---|"]
  number = lambda value: "n/a" if value is None else f"{value:.3g}"
  for variant in variants[1:]:
    for name in [primary] + [n for n in names if n != primary]:
      s = summary[variant][name]
      if "difference" not in s:
        continue
      ci = "n/a" if s["ci95"] is None else f"[{_signed(s['ci95'][0])}, {_signed(s['ci95'][1])}]"
      holm_p = number(s["p_holm"]) if "p_holm" in s else ""
      verdict_ = f"**{s['verdict']}**" if s["verdict"] == "holds" else s["verdict"]
      lines.append(f"| {variant} | {name} | {_signed(s['difference'])} | {ci} | {number(s['p_value'])} | {holm_p} "
                   f"| {verdict_} |")
  return "\n".join(lines) + "\n"
