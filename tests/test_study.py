"""study.py end to end at tiny sizes: four variants, their summary and plots, and resuming."""
import json

from configs import common
from tests.test_training import TINY, run_script

STUDY_FLAGS = ["--seeds=0", "--epsilons=0.5", "--pgd_steps=2", "--examples=4"]


def test_study_trains_the_four_variants_once_and_summarises_them(tmp_path):
  overrides = TINY | {"train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 2}
  first = run_script("study.py", tmp_path, overrides, devices=1, extra=STUDY_FLAGS, timeout=600)
  assert first.returncode == 0, first.stderr
  assert first.stdout.count("=== ") == 4
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert list(summary["variants"]) == list(common.ABLATION) and summary["attacks"] == ["fgsm", "pgd"]
  baseline = summary["variants"]["standard attention + standard residual"]
  assert {"accuracy", "loss", "fgsm 0.5", "pgd 0.5", "SNR dB (last layer)", "uniformity (last layer)"} <= set(baseline)
  assert baseline["accuracy"]["difference"] == 0.0 and len(baseline["accuracy"]["values"]) == 1
  result = json.loads((tmp_path / "BSA_GRC" / "seed_0" / "result.json").read_text())
  assert result["step"] == 4 and result["results"]["test"]["accuracy"] == summary["variants"]["BSA + GRC"]["accuracy"]["mean"]
  assert len(result["depth"]["snr_db"]) == 2  # Y_0 and Y_1 of the one-layer stack
  for name in ("summary.md", "curves.png", "robustness.png", "snr.png", "uniformity.png"):
    assert (tmp_path / name).exists(), name
  assert "| BSA + GRC |" in (tmp_path / "summary.md").read_text()

  # interrupted after training BSA + GRC but before its result was written: only that run is redone
  (tmp_path / "BSA_GRC" / "seed_0" / "result.json").unlink()
  second = run_script("study.py", tmp_path, overrides, devices=1, extra=STUDY_FLAGS, timeout=600)
  assert second.returncode == 0, second.stderr
  assert second.stdout.count("=== ") == 1 and "=== BSA + GRC, seed 0" in second.stdout
  assert second.stdout.count(": done (") == 3 and "resumed from step 4" in second.stdout
  again = json.loads((tmp_path / "BSA_GRC" / "seed_0" / "result.json").read_text())
  assert again["results"] == result["results"] and again["attacks"] == result["attacks"]

  # other attack settings: every run is evaluated again from its checkpoint, none is retrained
  third = run_script("study.py", tmp_path, overrides, devices=1, extra=STUDY_FLAGS[:1] + ["--attacks=fgsm", "--epsilons=0.25"]
                     + STUDY_FLAGS[2:], timeout=600)
  assert third.returncode == 0, third.stderr
  assert third.stdout.count("evaluating again") == 4 and third.stdout.count("resumed from step 4") == 4
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["attacks"] == ["fgsm"] and "fgsm 0.25" in summary["variants"]["BSA + GRC"]
