"""`train.py --dry_run --topology`: the real train and eval steps compiled by libtpu for a TPU slice (v5e
2x2) on this CPU machine, from the config alone (no dataset present), with the memory per chip against its
capacity."""
import json
import os
import subprocess
import sys

import pytest

from bilateral_jax import console, parallel
from tests.test_training import ROOT, TINY, TINY_MODEL_AND_LOOP, run_script

KEYS = {"topology", "chips", "bytes_per_chip", "chip_bytes", "fits", "flops_per_chip", "attention_path"}


@pytest.mark.parametrize("config, overrides", [
    (None, TINY),  # configs/default.py: generated ListOps, never built here
    ("configs/lra_text.py:small", TINY_MODEL_AND_LOOP | {"data.max_length": 64, "model.transformer.max_length": 65,
                                                          "data.directory": "/nonexistent/aclImdb"}),
    # random erasing: the train batch carries an `erase` box, the eval batch does not
    ("configs/deit_tiny_imagenet.py", TINY_MODEL_AND_LOOP | {"data.image_size": 32, "model.transformer.max_length": 5,
                                                              "data.directory": "/nonexistent/imagenet"}),
])
def test_dry_run_compiles_for_a_tpu_slice_without_the_data(tmp_path, config, overrides):
  tfds_dir = tmp_path / "tfds"
  done = run_script("train.py", tmp_path / "run", overrides | {"data.tfds_dir": str(tfds_dir)}, devices=1,
                    config=config, extra=["--dry_run", "--topology=v5e:2x2", "--json"], timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert KEYS <= set(report) and report["topology"] == "v5e:2x2" and report["chips"] == 4
  memory = report["bytes_per_chip"]
  assert set(memory) >= {"arguments", "temporaries", "outputs", "total"} and memory["temporaries"] > 0
  assert memory["total"] == sum(memory[name] for name in ("arguments", "outputs", "temporaries", "generated_code"))
  assert report["chip_bytes"] == 16 * 2**30 and report["fits"] is True and report["flops_per_chip"] > 0
  assert report["attention_path"].startswith("bilateral via ")
  assert not tfds_dir.exists() and not (tmp_path / "run").exists()  # no data built, nothing written


def test_the_console_report_and_bad_slices(tmp_path):
  done = run_script("train.py", tmp_path / "run", TINY, devices=1, extra=["--dry_run", "--topology=v5e:2x2"])
  assert done.returncode == 0, done.stderr[-3000:]
  assert "slice: v5e:2x2 (4 x TPU v5 lite), mesh data=4 fsdp=1" in done.stdout
  assert "fits in 16 GiB per chip" in done.stdout and "TFLOP per train step and chip" in done.stdout
  assert "TPU_WORKER_HOSTNAMES" not in done.stderr and "accelerator type" not in done.stderr  # libtpu is quiet
  too_big = run_script("train.py", tmp_path / "run", TINY | {"train.batch_size": 2**22}, devices=1,
                       extra=["--dry_run", "--topology=v5e:2x2", "--json"])
  assert too_big.returncode == 0, too_big.stderr[-3000:]
  report = json.loads(too_big.stdout.strip().splitlines()[-1])
  assert report["fits"] is False and report["bytes_per_chip"] is None, report
  assert report["refused"].startswith("train step: ") and "exceeds available HBM" in report["refused"]
  assert "Traceback" not in too_big.stderr
  unknown = run_script("train.py", tmp_path / "run", TINY, devices=1, extra=["--dry_run", "--topology=v9z:1x1"])
  assert unknown.returncode == 2 and "cannot describe the TPU slice 'v9z:1x1'" in unknown.stderr, unknown.stderr
  alone = run_script("train.py", tmp_path / "run", TINY, devices=1, extra=["--topology=v5e:2x2"])
  assert alone.returncode != 0 and "needs --dry_run" in alone.stderr


def test_device_bytes_counts_a_chips_cores():
  class Device:
    def __init__(self, kind, core):
      self.device_kind, self.core_on_chip = kind, core
  assert parallel.device_bytes([Device("TPU v5 lite", 0)] * 4) == 16 * 2**30
  assert parallel.device_bytes([Device("TPU v3", 0), Device("TPU v3", 1)]) == 16 * 2**30
  assert parallel.device_bytes([Device("TPU v99", 0)]) is None


def test_with_libtpu_installed_a_host_without_accelerators_runs_on_the_cpu_quietly(tmp_path):
  env = {name: value for name, value in os.environ.items() if name != "JAX_PLATFORMS"}  # as `make demo` runs
  done = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path / 'run'}", "--dry_run",
                         *[f"--config.{key}={value}" for key, value in TINY.items()]],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert " cpu in 1 process" in done.stdout and "libtpu" not in done.stderr and "TPU_" not in done.stderr, done.stderr


def test_a_refused_eval_step_reads_as_not_fitting_beside_the_train_steps_memory():
  memory = {"arguments": 2**20, "temporaries": 2**30, "outputs": 2**20, "total": 2**30 + 2**21}
  report = {"topology": "v5e:2x2", "chips": 4, "device_kind": "TPU v5 lite", "mesh": {"data": 4, "fsdp": 1},
            "attention_path": "standard (explicit logits, all layers)", "assumed": {}, "chip_bytes": 16 * 2**30,
            "fits": False, "refused": "eval step: the total memory required for HLO temporaries (20.81G) exceeds "
            "available HBM (15.75G)", "bytes_per_chip": memory, "eval_bytes_per_chip": None, "flops_per_chip": 1e12,
            "compile_seconds": {"train": 60.0}}
  lines = console.slice_summary(report).splitlines()
  assert lines[2] == "train step per chip: arguments 1 MiB, temporaries 1 GiB, outputs 1 MiB, total 1.002 GiB"
  assert lines[3] == "does NOT fit: libtpu refuses the eval step: the total memory required for HLO temporaries " \
                     "(20.81G) exceeds available HBM (15.75G)" and len(lines) == 4
