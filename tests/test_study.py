"""Study files and the statistics of a study (bilateral_jax/comparisons.py), and study.py end to end at tiny
sizes: chosen variants of a study file, their summary and plots, resuming, refusing a bad variant."""
import importlib
import json
import re

import numpy as np
import pytest
from scipy import stats

from bilateral_jax import comparisons, experiments
from configs import common
from tests.samples import write_text_corpus
from tests.test_training import ROOT, TINY, TINY_MODEL_AND_LOOP, run_script, tiny_config

STUDY_FLAGS = ["--seeds=0,1", "--epsilons=0.5", "--pgd_steps=2", "--examples=4"]
VARIANTS = {  # those that already validate (standard, RoPE, BSA with its isotropic Gaussian)
    "absolute": {"attention": "standard", "position_table": "learned", "residual": "standard"},
    "RoPE (no table)": {"model.transformer.attention": "rope", "position_table": "none", "residual": "standard"},
    "BSA": {"attention": "bilateral", "spatial": "gaussian", "residual": "standard"},
}


def test_t_quantiles_and_the_paired_and_welch_intervals():
  # the t quantiles the intervals use, against published values
  assert stats.t.ppf(0.975, 4) == pytest.approx(2.7764451051977987, rel=1e-12)
  assert stats.t.ppf(0.975, 1) == pytest.approx(12.706204736174704, rel=1e-12)
  a = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95, 4: 0.92}
  b = {0: 0.89, 1: 0.90, 2: 0.90, 3: 0.91, 4: 0.90}
  paired = comparisons.compare(a, b, paired=True)
  d = np.array([a[s] - b[s] for s in range(5)])
  half = 2.7764451051977987 * d.std(ddof=1) / np.sqrt(5)
  assert paired["test"] == "paired t" and paired["df"] == 4 and paired["seed_count"] == 5
  np.testing.assert_allclose(paired["ci95"], [d.mean() - half, d.mean() + half], rtol=1e-10)
  np.testing.assert_allclose(paired["p_value"], stats.ttest_rel(list(a.values()), list(b.values())).pvalue, rtol=1e-10)
  welch = comparisons.compare(a, b, paired=False)
  va, vb = np.var(list(a.values()), ddof=1) / 5, np.var(list(b.values()), ddof=1) / 5
  df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)  # Welch-Satterthwaite
  assert welch["test"] == "Welch t" and welch["df"] == pytest.approx(df, rel=1e-12) and 4 < df < 8
  reference = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
  np.testing.assert_allclose(welch["p_value"], reference.pvalue, rtol=1e-10)
  half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
  np.testing.assert_allclose(welch["ci95"], [d.mean() - half, d.mean() + half], rtol=1e-10)
  # two seeds paired: df 1; other seeds than the baseline's: Welch even when paired is asked for
  two = comparisons.compare({0: 1.0, 1: 3.0}, {0: 0.0, 1: 0.0})
  np.testing.assert_allclose(two["ci95"], [2 - 12.706204736174704, 2 + 12.706204736174704], rtol=1e-12)
  assert comparisons.compare({0: 1.0, 2: 2.0}, {0: 0.0, 1: 1.0})["test"] == "Welch t"
  one = comparisons.compare({0: 1.0}, {0: 0.5})
  assert one["difference"] == 0.5 and one["ci95"] is None and comparisons.verdict(one) == "n/a"


def test_verdicts_need_an_interval_without_zero_and_five_seeds():
  five = {s: 1.0 + 0.01 * s for s in range(5)}
  assert comparisons.verdict(comparisons.compare(five, {s: 0.0 for s in range(5)})) == "holds"
  assert comparisons.verdict(comparisons.compare(five, {s: 0.0 for s in range(5)}), primary=False) == (
      "excludes 0 (secondary)")
  three = {s: five[s] for s in range(3)}
  assert comparisons.verdict(comparisons.compare(three, {s: 0.0 for s in range(3)})) == "excludes 0, too few seeds"
  assert comparisons.verdict(comparisons.compare(five, {s: 1.02 + 0.01 * (-1) ** s for s in range(5)})) == "includes 0"
  summary = comparisons.summarize({"base": {s: {"accuracy": 0.0, "success": None} for s in range(3)},
                                   "new": {s: {"accuracy": three[s], "success": 0.5} for s in range(3)}},
                                  primary="accuracy")
  assert "difference" not in summary["base"]["accuracy"] and summary["base"]["success"]["mean"] is None
  assert summary["new"]["accuracy"]["verdict"] == "excludes 0, too few seeds"
  assert "difference" not in summary["new"]["success"]
  text = comparisons.markdown(summary, title="t", split="test", seeds=[0, 1, 2], primary="accuracy",
                              parameters={"base": 1234})
  assert "**3 seeds per variant: not enough for a claim**" in text and "| new | accuracy | +1.0100 | [" in text
  assert "**holds**" not in text and "| base | 1,234 | 0.0000 ± 0.0000 | n/a |" in text and "| new | n/a |" in text
  summary = comparisons.summarize({"base": {s: {"accuracy": 0.0, "snr": 0.0} for s in range(5)},
                                   "new": {s: {"accuracy": v, "snr": v} for s, v in five.items()}}, primary="accuracy")
  text = comparisons.markdown(summary, title="t", split="test", seeds=list(range(5)), primary="accuracy")
  assert "not enough for a claim" not in text and "| **holds** |" in text and "| excludes 0 (secondary) |" in text
  with pytest.raises(ValueError, match="the primary quantity 'perplexity' is not among those measured: accuracy"):
    comparisons.summarize({"base": {0: {"accuracy": 0.0}}}, primary="perplexity")


def test_holm_adjusts_the_primary_quantity_over_the_comparisons_with_the_baseline():
  # Holm (1979) by hand: p sorted 0.01 < 0.02 < 0.04 over m = 3 -> 0.03, max(0.03, 0.04), max(0.04, 0.04)
  assert comparisons.holm({"a": 0.04, "b": 0.01, "c": 0.02, "d": None}) == pytest.approx(
      {"a": 0.04, "b": 0.03, "c": 0.04, "d": None})
  assert comparisons.holm({"a": 0.6, "b": 0.5}) == {"a": 1.0, "b": 1.0}
  rng = np.random.default_rng(0)
  base = {s: 0.9 + 0.01 * rng.normal() for s in range(5)}
  # one clear gain, and one difference whose uncorrected interval excludes 0 but whose Holm p does not pass
  clear = {s: v + 0.05 + 0.001 * rng.normal() for s, v in base.items()}
  marginal = {s: v + d for (s, v), d in zip(base.items(), [0.0194, 0.0006, 0.0147, 0.0053, 0.01])}  # p about 0.04
  noise = {s: v + 0.01 * rng.normal() for s, v in base.items()}
  per_seed = {name: {s: {"accuracy": v, "snr": v} for s, v in values.items()}
              for name, values in (("base", base), ("clear", clear), ("marginal", marginal), ("noise", noise))}
  summary = comparisons.summarize(per_seed, primary="accuracy")
  p = {name: summary[name]["accuracy"]["p_value"] for name in ("clear", "marginal", "noise")}
  assert 0.025 < p["marginal"] < 0.05 < p["noise"] and 3 * p["clear"] < 0.05  # the case this test is about
  assert {name: summary[name]["accuracy"]["p_holm"] for name in p} == comparisons.holm(p)
  assert summary["clear"]["accuracy"]["verdict"] == "holds"
  assert summary["marginal"]["accuracy"]["verdict"] == "excludes 0, not after Holm"
  assert summary["marginal"]["snr"]["verdict"] == "excludes 0 (secondary)" and "p_holm" not in summary["clear"]["snr"]


def test_study_files_and_variant_configs(tmp_path):
  study = comparisons.load(ROOT / "studies" / "digits_positions.py")
  assert study.baseline == "learned absolute" and len(study.variants) == 7 and "study.py" in study.description
  base = __import__("configs.digits_vit", fromlist=["get_config"]).get_config()
  for name in ("learned absolute", "RoPE", "BSA gaussian"):
    experiments.check_settings(comparisons.variant_config(base, name, study.variants[name]))
  config = comparisons.variant_config(base, "x", study.variants["BSA gaussian, mean pooling"])
  assert config.model.pooling == "mean" and config.model.transformer.attention == "bilateral"
  assert base.model.pooling == "cls"  # the base is copied, not changed
  for name, overrides in common.ABLATION.items():  # the default study: plain TransformerConfig field names
    variant = comparisons.variant_config(tiny_config(), name, overrides)
    assert variant.model.transformer.residual == overrides["residual"]
  with pytest.raises(ValueError, match="study variant 'x': unknown config key 'attenton'"):
    comparisons.variant_config(base, "x", {"attenton": "rope"})
  with pytest.raises(ValueError, match=r"unknown config key 'model.poling' \(no config.model.poling\)"):
    comparisons.variant_config(base, "x", {"model.poling": "mean"})
  with pytest.raises(ValueError, match="study variant 'x': num_layers='two'"):
    comparisons.variant_config(base, "x", {"num_layers": "two"})
  path = tmp_path / "study.json"
  path.write_text(json.dumps(VARIANTS))
  loaded = comparisons.load(path)
  assert list(loaded.variants) == list(VARIANTS) and loaded.baseline == "absolute"
  assert list(comparisons.select(loaded, ["BSA"]).variants) == ["absolute", "BSA"]
  assert list(comparisons.select(loaded, [], baseline="BSA").variants) == ["BSA"] + [v for v in VARIANTS if v != "BSA"]
  assert list(comparisons.select(loaded, [list(VARIANTS)[0]], baseline="BSA").variants) == ["BSA", list(VARIANTS)[0]]
  with pytest.raises(ValueError, match="--variant/--baseline 'bsa' not in"):
    comparisons.select(loaded, ["bsa"])
  with pytest.raises(ValueError, match="--variant/--baseline 'bsa' not in"):
    comparisons.select(loaded, [], baseline="bsa")
  (tmp_path / "empty.py").write_text("X = 1\n")
  with pytest.raises(ValueError, match="defines no VARIANTS"):
    comparisons.load(tmp_path / "empty.py")


def test_run_scalars_report_success_rates_what_the_readout_reads_and_the_decoder_apart():
  profile = {"layer": [0, 1, 2], "snr_db": [20.0, 12.0, 11.0], "token_uniformity": [0.1, 0.3, 0.4]}
  result = {"results": {"validation": {"accuracy": 0.8, "loss": 0.5},
                        "test": {"accuracy": 0.9, "loss": 0.3, "examples": 10}},
            "attacks": {"test": {"pgd": {"8": {"accuracy": 0.5, "attack_success_rate": 0.45}}}},
            "depth": profile | {"read_layer": 2, "readout_snr_db": None,
                                "decoder": {"layer": [0, 1, 2], "snr_db": [9.0, 8.0, 7.0],
                                            "token_uniformity": [0, 0, 0.5]}}}
  assert comparisons.run_scalars(result, "test", "accuracy") == {
      "accuracy": 0.9, "loss": 0.3, "validation accuracy": 0.8, "pgd 8": 0.5, "pgd 8 success rate": 0.45,
      "SNR dB (layer 2)": 11.0,
      "uniformity (layer 2)": 0.4, "decoder SNR dB (last layer)": 7.0, "decoder uniformity (last layer)": 0.5}
  result["depth"] |= {"read_layer": 1, "readout_snr_db": 5.0}  # CLS pooling: the readout and Y_{L-1}
  del result["depth"]["decoder"]
  result["seconds_per_step"] = 0.25
  assert comparisons.run_scalars(result, "test", "accuracy") == {
      "accuracy": 0.9, "loss": 0.3, "validation accuracy": 0.8, "pgd 8": 0.5, "pgd 8 success rate": 0.45,
      "SNR dB (readout)": 5.0,
      "SNR dB (layer 1)": 12.0, "uniformity (layer 1)": 0.3, "seconds per step": 0.25}


def test_study_trains_the_chosen_variants_once_and_summarises_them(tmp_path):
  overrides = TINY | {"train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 2,
                      "model.vocab_size": 0}  # from the data: a finished run saved the size it was given
  study_file = tmp_path / "study.json"
  study_file.write_text(json.dumps(VARIANTS))
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"absolute": {}, "typo": {"model.transformer.atention": "rope"}}))
  refused = run_script("study.py", tmp_path / "bad", overrides, devices=1, extra=[f"--variants={bad}"])
  assert refused.returncode == 2
  assert "study variant 'typo': unknown config key 'model.transformer.atention'" in refused.stderr
  assert "===" not in refused.stdout and not (tmp_path / "bad" / "absolute").exists()  # nothing trained

  chosen = [f"--variants={study_file}", "--variant=RoPE (no table)"]
  first = run_script("study.py", tmp_path, overrides, devices=1, extra=STUDY_FLAGS + chosen, timeout=600)
  assert first.returncode == 0, first.stderr
  assert first.stdout.count("=== ") == 4  # the baseline and RoPE, two seeds each
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert list(summary["variants"]) == ["absolute", "RoPE (no table)"] and summary["attacks"] == ["fgsm", "pgd", "reflect"]
  assert summary["baseline"] == "absolute" and summary["paired"] and summary["study"] == str(study_file)
  rope = summary["variants"]["RoPE (no table)"]
  assert {"accuracy", "loss", "fgsm 0.5", "pgd 0.5", "pgd 0.5 success rate", "SNR dB (layer 1)",
          "uniformity (layer 1)"} <= set(rope)  # TINY: 1 layer, mean pooling
  assert summary["primary"] == "accuracy" and summary["depth_split"] == "validation"
  assert summary["parameters"]["absolute"] > summary["parameters"]["RoPE (no table)"] > 0  # the table
  assert re.fullmatch(r"[0-9a-f]{7,}(\+changes)?|unknown", summary["commit"])
  accuracy = rope["accuracy"]
  assert accuracy["test"] == "paired t" and accuracy["df"] == 1 and accuracy["seed_count"] == 2
  assert accuracy["seeds"] == [0, 1]  # the per-seed values keep their seeds
  assert accuracy["ci95"] is None or accuracy["ci95"][0] <= accuracy["difference"] <= accuracy["ci95"][1]
  result = json.loads((tmp_path / "RoPE-no-table" / "seed_1" / "result.json").read_text())
  assert result["step"] == 4 and result["results"]["test"]["accuracy"] == accuracy["values"][1]
  assert result["overrides"] == VARIANTS["RoPE (no table)"] and len(result["depth"]["snr_db"]) == 2
  assert result["depth"]["split"] == "validation" and result["depth"]["read_layer"] == 1
  assert 0 < result["seconds_per_step"] < result["seconds"]["train"]
  pgd = result["attacks"]["test"]["pgd"]["0.5"]
  assert 0 <= pgd["clean_correct"] <= pgd["examples"] and "attack_success_rate" in pgd
  text = (tmp_path / "summary.md").read_text()
  assert "| RoPE (no table) | accuracy |" in text and "not enough for a claim" in text and "| BSA" not in text
  assert comparisons.SNR_NOTE in text and "the first 4 examples of the validation split" in text
  for name in ("summary.md", "curves.png", "robustness.png", "snr.png", "uniformity.png"):
    assert (tmp_path / name).exists(), name

  # interrupted after training RoPE seed 1 but before its result was written: only that run is redone
  (tmp_path / "RoPE-no-table" / "seed_1" / "result.json").unlink()
  second = run_script("study.py", tmp_path, overrides, devices=1, extra=STUDY_FLAGS + chosen, timeout=600)
  assert second.returncode == 0, second.stderr
  assert second.stdout.count("=== ") == 1 and "=== RoPE (no table), seed 1" in second.stdout
  assert second.stdout.count(": done (") == 3 and "resumed from step 4" in second.stdout
  again = json.loads((tmp_path / "RoPE-no-table" / "seed_1" / "result.json").read_text())
  assert again["results"] == result["results"] and again["attacks"] == result["attacks"]

  # other attack settings: every run is evaluated again from its checkpoint, none is retrained
  trained = json.loads((tmp_path / "absolute" / "seed_0" / "result.json").read_text())["seconds"]
  third = run_script("study.py", tmp_path, overrides, devices=1, timeout=600,
                     extra=STUDY_FLAGS[:1] + ["--attacks=fgsm", "--epsilons=0.25"] + STUDY_FLAGS[2:] + chosen[:1]
                     + ["--variant=absolute", "--baseline=RoPE (no table)", "--nopaired"])
  assert third.returncode == 0, third.stderr
  assert third.stdout.count("evaluating again") == 4 and third.stdout.count("resumed from step 4") == 4
  seconds = json.loads((tmp_path / "absolute" / "seed_0" / "result.json").read_text())["seconds"]
  assert seconds["train"] == trained["train"] and seconds["total"] == seconds["train"] + seconds["evaluation"]
  # another baseline than the study's: a comparison of the same runs, in files of its own
  assert json.loads((tmp_path / "summary.json").read_text())["baseline"] == "absolute"
  summary = json.loads((tmp_path / "against_RoPE-no-table" / "summary.json").read_text())
  assert summary["attacks"] == ["fgsm"] and "fgsm 0.25 success rate" in summary["variants"]["RoPE (no table)"]
  assert summary["baseline"] == "RoPE (no table)" and list(summary["variants"]) == ["RoPE (no table)", "absolute"]
  assert summary["variants"]["absolute"]["accuracy"]["test"] == "Welch t"

  # another evaluation (a masking check) in its own files; the study's own results untouched
  before = {path: path.read_text() for path in tmp_path.glob("*/seed_*/result.json")}
  masking = run_script("study.py", tmp_path, overrides, devices=1, timeout=600,
                       extra=STUDY_FLAGS[:1] + ["--attacks=pgd", "--epsilons=0.25,4", "--pgd_restarts=2",
                                                "--evaluation=masking"] + STUDY_FLAGS[2:] + chosen)
  assert masking.returncode == 0, masking.stderr
  assert masking.stdout.count("=== ") == 4 and {path: path.read_text() for path in before} == before
  summary = json.loads((tmp_path / "evaluation_masking" / "summary.json").read_text())
  assert summary["attack_settings"]["pgd_restarts"] == 2 and "pgd 4" in summary["variants"]["absolute"]
  assert len(list(tmp_path.glob("*/seed_*/result_masking.json"))) == 4
  assert (tmp_path / "evaluation_masking" / "robustness.png").exists()
  refused = run_script("study.py", tmp_path, overrides, devices=1, extra=STUDY_FLAGS + chosen + ["--transfer"])
  assert refused.returncode == 2 and "--transfer: transfer attacks need image inputs" in refused.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.py")), ids=lambda path: path.stem)
def test_every_shipped_study_file_builds_a_valid_model_for_each_variant(path):
  """Each study file's variants, on the config its own command names, are settings train.py accepts and
  build a model (docs/results.md runs these commands at full size)."""
  study = comparisons.load(path)
  config_file, *variant = re.search(r"--config configs/(\w+)\.py(?::(\w+))?", study.description).groups()
  base = importlib.import_module(f"configs.{config_file}").get_config(*[v for v in variant if v])
  for name, overrides in study.variants.items():
    config = comparisons.variant_config(base, name, overrides)
    experiments.check_settings(config)
    experiments.make_model(config)


def test_masking_check_command_adds_restarts_and_transfer_attacks_beside_the_study(tmp_path):
  """docs/training.md's masking check, at tiny sizes: the baseline and one variant trained, then attacked
  by PGD with restarts and by PGD crafted on the baseline's run of the same seed, in files of their own."""
  overrides = {"train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4, "train.batch_size": 16,
               "model.transformer.model_dim": 16, "model.transformer.mlp_dim": 32, "eval.batch_size": 64}
  command = ["--variants=studies/digits_attribution.py", "--seeds=0", "--attack_convention=pixel",
             "--evaluation=masking", "--attacks=pgd", "--pgd_steps=2", "--pgd_restarts=2", "--epsilons=8,128",
             "--transfer", "--variant=BSA dot", "--examples=4"]
  done = run_script("study.py", tmp_path, overrides, devices=1, config="configs/digits_vit.py", extra=command,
                    timeout=600)
  assert done.returncode == 0, done.stderr
  assert not list(tmp_path.glob("*/seed_0/result.json"))  # only this evaluation's files
  summary = json.loads((tmp_path / "evaluation_masking" / "summary.json").read_text())
  assert summary["attack_settings"]["pgd_restarts"] == 2
  assert list(summary["variants"]) == ["learned absolute", "BSA dot"]
  bsa, baseline = summary["variants"]["BSA dot"], summary["variants"]["learned absolute"]
  assert {"pgd 128", "pgd 128 transferred", "pgd 128 transferred success rate"} <= set(bsa)
  assert baseline["pgd 128 transferred"]["mean"] is None  # the baseline is the source
  result = json.loads((tmp_path / "BSA-dot" / "seed_0" / "result_masking.json").read_text())
  assert set(result["transfer"]["test"]["pgd"]) == {"8", "128"}


def test_a_language_model_study_scores_each_run_at_other_lengths(tmp_path):
  """--eval_lengths: each run's test text also scored in windows of each length, summarised per length
  (`perplexity at N`, paired like any quantity) and plotted against the length; at the training context
  it is the run's own test perplexity."""
  write_text_corpus(tmp_path / "data")
  overrides = TINY_MODEL_AND_LOOP | {"data.directory": str(tmp_path / "data"), "data.max_length": 16,
                                     "model.transformer.max_length": 16, "train.num_steps": 2, "train.eval_every": 2,
                                     "train.checkpoint_every": 2}
  variants = tmp_path / "lengths.json"
  variants.write_text(json.dumps({"ALiBi": {"attention": "alibi", "residual": "standard"},
                                  "BSA": {"attention": "bilateral", "spatial": "laplacian", "residual": "standard"}}))
  done = run_script("study.py", tmp_path / "study", overrides, devices=1, config="configs/shakespeare_char_lm.py",
                    extra=[f"--variants={variants}", "--seeds=0,1", "--attacks=contamination", "--examples=4",
                           "--eval_lengths=16,32"], timeout=600)
  assert done.returncode == 0, done.stderr
  summary = json.loads((tmp_path / "study" / "summary.json").read_text())
  bsa = summary["variants"]["BSA"]
  assert {"perplexity at 16", "perplexity at 32"} <= set(bsa) and bsa["perplexity at 32"]["seeds"] == [0, 1]
  np.testing.assert_allclose(bsa["perplexity at 16"]["values"], bsa["perplexity"]["values"], rtol=1e-6)
  assert (tmp_path / "study" / "lengths.png").exists() and (tmp_path / "study" / "long_range.png").exists()
  assert all(value > 0 for value in bsa["attention sensitivity at 32"]["values"])  # diagnose.py --long_range's
