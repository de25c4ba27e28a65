"""Every script in benchmarks/ runs as README.md and docs/ show it, at a tiny size, and prints its table:
each variant's row with its ratio to standard attention, measured in the same run (input_pipeline.py: each
config's row with the ratio of its two sides, the step's demand over the input's supply per core)."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from benchmarks import attention, tpu_memory
from configs import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.name for path in (ROOT / "benchmarks").glob("*.py"))
TINY = {"attention.py": ["--lengths", "64", "--rounds", "1"], "train_step.py": ["--rounds", "1", "--steps", "3"],
        "tpu_memory.py": ["--lengths", "4096", "--batch-per-chip", "2"],
        "input_pipeline.py": ["--configs", "configs/digits_vit.py", "--config", "configs/default.py",
                              "--config.data.train_size=256", "--config.data.validation_size=32",
                              "--config.data.test_size=32", "--examples", "32", "--steps", "2"]}
NUMBER = r"\d+\.\d+"
ROWS = {  # the printed row of each variant, by script
    "attention.py": [rf"N=64\s+{re.escape(name)}\s+{NUMBER} ms  x\s*{NUMBER}  temp\s+{NUMBER} MiB"
                     for name in attention.variants(64, 8)],
    "train_step.py": [rf"{re.escape(name)}\s+{NUMBER}\s+\d+\s+{NUMBER}" for name in common.ABLATION],
    "input_pipeline.py": [rf"{re.escape(name)}\s+{batch}\s+\d+\s+{NUMBER}\s+\d+\s+{NUMBER}"
                          for name, batch in (("configs/digits_vit.py", 64), ("configs/default.py (overrides)", 32))],
    "tpu_memory.py": [rf"{re.escape(case)}\s+N=4096\s+{re.escape(name)}\s+temp\s+{NUMBER} MiB  x\s*(?:{NUMBER}|-)  compile\s+{NUMBER} s"
                      for case in tpu_memory.CASES for name in tpu_memory.ATTENTIONS],
}
BASELINE = {"attention.py": r"N=64\s+standard \(jax\.nn\)\s+\S+ ms  x 1\.00 ",
            "train_step.py": r"standard attention \+ standard residual\s+\S+\s+\S+\s+1\.000",
            "input_pipeline.py": None,  # no baseline variant: each row holds its own ratio, checked in its JSON
            "tpu_memory.py": r"gaussian, bidirectional\s+N=4096\s+standard \(XLA\)\s+temp\s+\S+ MiB  x(  1\.00|     -) "}


def test_the_docs_and_make_show_every_benchmark_and_only_those():
  docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
  shown = {script for doc in docs for script in re.findall(r"`python (benchmarks/\S+\.py)", doc.read_text())}
  assert sorted(shown) == [f"benchmarks/{script}" for script in SCRIPTS]
  assert sorted(TINY) == SCRIPTS  # a new script needs its tiny size here
  assert "benchmark: venv\n\t$(PYTHON) benchmarks/train_step.py\n" in (ROOT / "Makefile").read_text()


def check_printed(script, stdout, results):
  """Each variant's row printed once, the baseline's ratio 1, and one JSON row per printed row."""
  lines = stdout.splitlines()
  for row in ROWS[script]:
    assert sum(bool(re.fullmatch(row, line)) for line in lines) == 1, (row, stdout)
  if BASELINE[script] is not None:
    assert any(re.match(BASELINE[script], line) for line in lines), stdout
  assert len(results.get("rows", results.get("results"))) == len(ROWS[script])


BY_GPU_CHECK = ("attention.py", "train_step.py")  # run at their tiny size inside the gpu_check test
# tpu_memory.py runs at its tiny size in tests/test_flash_tpu.py, which checks its kernels' memory too.


@pytest.mark.parametrize("script", [script for script in SCRIPTS if script not in BY_GPU_CHECK + ("tpu_memory.py",)])
def test_benchmark_runs_at_a_tiny_size_and_prints_its_ratios(script, tmp_path):
  out = tmp_path / "out.json"
  done = subprocess.run([sys.executable, f"benchmarks/{script}", *TINY[script], "--out", str(out)], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads(out.read_text())
  check_printed(script, done.stdout, results)
  for row in results.get("rows", []) if script == "input_pipeline.py" else []:
    assert row["input_examples_per_core_s"] > 0 and row["step_examples_per_s"] > 0, row
    assert row["cores_needed"] == pytest.approx(row["step_examples_per_s"] / row["input_examples_per_core_s"])
    assert row["examples_read"] >= 32, row


def test_the_gpu_check_stops_without_a_gpu_and_otherwise_writes_its_report(tmp_path):
  """benchmarks/gpu_check.sh (the GPU command of README.md and docs/results.md), run here on the CPU at a
  tiny size: it runs attention.py and train_step.py with the sizes of `TINY`, checked here as the other scripts are."""
  env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path))
  refused = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert refused.returncode == 3 and "no GPU here (jax's backend: cpu): nothing measured" in refused.stderr
  assert TINY["attention.py"] == ["--lengths", "64", "--rounds", "1"]
  assert TINY["train_step.py"] == ["--rounds", "1", "--steps", "3"]
  tiny = env | dict(GPU_CHECK_ALLOW_CPU="1", GPU_CHECK_TESTS="dispatch_takes", GPU_CHECK_LENGTHS="64",
                    GPU_CHECK_ROUNDS="1", GPU_CHECK_STEPS="3")
  done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=tiny, capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = (tmp_path / "report.txt").read_text()
  assert "1 passed" in report, report
  for script in BY_GPU_CHECK:
    check_printed(script, report, json.loads((tmp_path / script.replace(".py", ".json")).read_text()))


def test_the_lra_gpu_script_stops_without_a_gpu_and_otherwise_sizes_and_runs_the_study(tmp_path):
  """benchmarks/lra_gpu.sh (docs/results.md's command for LRA's ListOps at 2,000 tokens on a GPU), run here on
  the CPU at a tiny size: both variants probed, the study sized from their measured steps (at least 100)
  and its summary in the report."""
  env = dict(os.environ, PYTHON=sys.executable, LRA_GPU_OUT=str(tmp_path), TFDS_DATA_DIR=str(tmp_path / "tfds"))
  refused = subprocess.run(["bash", "benchmarks/lra_gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert refused.returncode == 3 and "no GPU here (jax's backend: cpu): nothing trained" in refused.stderr
  tiny = {"data.train_size": 64, "data.validation_size": 16, "data.test_size": 16, "data.min_length": 5,
          "data.max_length": 32, "model.transformer.max_length": 32, "model.transformer.model_dim": 16,
          "model.transformer.mlp_dim": 32, "train.batch_size": 8, "eval.batch_size": 16}
  overrides = " ".join(f"--config.{key}={value}" for key, value in tiny.items())
  done = subprocess.run(["bash", "benchmarks/lra_gpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=env | dict(LRA_GPU_ALLOW_CPU="1", LRA_GPU_OVERRIDES=overrides, LRA_GPU_PROBE="4",
                                       LRA_GPU_MINUTES="0.01", JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = (tmp_path / "report.txt").read_text()
  for variant in ("learned-absolute", "BSA-asymmetric"):
    assert re.search(rf"^{variant}\s+{NUMBER} ms a step$", report, re.M), report
  assert "== 3. the study at 100 steps" in report
  summary = json.loads((tmp_path / "study_100" / "summary.json").read_text())
  assert list(summary["variants"]) == ["learned absolute", "BSA asymmetric"] and summary["seeds"] == [0]
  assert all(json.loads(path.read_text())["step"] == 100 for path in (tmp_path / "study_100").glob("*/seed_0/result.json"))
