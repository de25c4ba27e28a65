"""The training system end to end: steps, resume, devices, processes, checkpoints, eval, bad input.

Every config takes a training step on tiny samples of its data format. `train.py` killed (SIGKILL; or
SIGTERM, which saves and exits 3) and restarted by the same command in a new process ends with parameters
and logged losses bit-identical to an uninterrupted run. 1 device, 8 devices and two `jax.distributed`
processes (4 devices each) give the same losses; `eval.py` on 1 device reproduces what training on 8
logged; gradient accumulation equals one big batch. Two processes with parameters sharded across them
(`mesh.fsdp=2`), each with its own home and TFDS directory (as a pod's hosts have their own disks), train,
resume and evaluate as one process (losses to 1e-6 and parameters to 2e-5 of their scale of the
one-process run: its first update after a restore is not bit-reproducible across runs). A crash right
after a best or a regular save, or a damaged newest step, resumes to identical parameters; a diverging
run keeps its finite best checkpoint; `eval.py` beside a training that saves every step never disturbs it
(once while the training is paused, when a second `train.py` into the same directory is refused, and once
beside it); two jobs building one fresh `tfds_dir` both succeed; bad settings are one line with status 2;
TensorBoard's own reader loads the event files; `pip install -e .[test]` into a fresh venv imports from
another directory (marked `slow`; it runs in CI)."""
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest
from absl import logging as absl_logging
from etils import epath
from tensorboard.backend.event_processing import event_accumulator

from bilateral_jax import experiments, runs, trainer
from bilateral_jax.checkpointing import CheckpointError, CheckpointMismatch
from bilateral_jax.data import sources
from tests.samples import (write_aan, write_aclimdb, write_ade20k, write_cifar10, write_image_folders,
                           write_pathfinder, write_text_corpus, write_wikitext)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "common"))
CONFIGS.append("lra_pathfinder_generated")  # lra_pathfinder's default data; the plain name reads the release
TINY = {
    "model.transformer.num_layers": 1, "model.transformer.num_heads": 2, "model.transformer.model_dim": 16,
    "model.transformer.mlp_dim": 32, "model.transformer.max_length": 33,  # + a CLS token
    "data.max_length": 32, "data.min_length": 5, "data.train_size": 64, "data.validation_size": 24,
    "data.test_size": 16, "train.batch_size": 8, "train.num_steps": 6, "train.log_every": 1,
    "train.eval_every": 3, "train.checkpoint_every": 3, "eval.batch_size": 8, "optimizer.warmup_steps": 2,
}
TINY_MODEL_AND_LOOP = {k: v for k, v in TINY.items() if not k.startswith("data.")}


def tiny_config(name="default", **overrides):
  config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
  config.update_from_flattened_dict(TINY | overrides)
  return config


SAMPLES = {  # config -> (writes a tiny sample of its data format, data overrides)
    "wikitext103_lm": (write_wikitext, {"data.max_length": 16}),
    "shakespeare_char_lm": (write_text_corpus, {"data.max_length": 16}),
    "vit_cifar10": (write_cifar10, {"data.validation_size": 8}),
    "lra_image": (write_cifar10, {}),
    "lra_text": (write_aclimdb, {"data.validation_size": 4, "data.max_length": 32}),
    "lra_retrieval": (write_aan, {"data.max_length": 32}),
    "lra_pathfinder": (write_pathfinder, {"data.name": "lra_pathfinder"}),
    "deit_tiny_imagenet": (write_image_folders, {"data.image_size": 32, "model.patch_size": 16,
                                                 "model.num_classes": 0}),
    "segmenter_ade20k": (write_ade20k, {"data.image_size": 32, "model.patch_size": 8, "eval.window_stride": 16,
                                        "eval.canvas": 64}),
}


LRA_SMALL = ["lra_image", "lra_listops", "lra_pathfinder", "lra_retrieval", "lra_text"]


def small_config(name, tmp_path, **overrides):
  """Any config at test size, with a tiny sample of its data in the published format under tmp_path."""
  if name in ("default", "lra_listops"):
    return tiny_config(name, **overrides)
  if name == "digits_vit":  # the data ships with scikit-learn
    config = __import__("configs.digits_vit", fromlist=["get_config"]).get_config()
    config.update_from_flattened_dict(TINY_MODEL_AND_LOOP | {"model.transformer.max_length": 17} | overrides)
    return config
  if name == "lra_pathfinder_generated":
    config = __import__("configs.lra_pathfinder", fromlist=["get_config"]).get_config()
    config.update_from_flattened_dict(TINY_MODEL_AND_LOOP | {"model.transformer.max_length": 1025,
                                      "data.train_size": 16, "data.validation_size": 8, "data.test_size": 8}
                                      | overrides)
    return config
  config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
  write, data_overrides = SAMPLES[name]
  write(tmp_path / "data")
  config.update_from_flattened_dict(TINY_MODEL_AND_LOOP | data_overrides | {"data.directory": str(tmp_path / "data")}
                                    | {"model.transformer.max_length": 1025} | overrides)
  return config


def read_metrics(workdir, split="train"):
  """The lines of `split` in workdir's metrics.jsonl (a local path or gs://)."""
  lines = [json.loads(line) for line in (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [line for line in lines if line["split"] == split]


def run_script(script, workdir, overrides, devices=8, extra=(), timeout=300, config=None, env=None, **popen):
  """Runs train.py/eval.py as a user would (`config`: the --config file, default.py if None), with `devices`
  host CPU devices and TFDS data in the workdir (so that the processes of a multi-process run build their
  data together) unless `env` (added to the environment) says otherwise."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu",
             TFDS_DATA_DIR=f"{workdir}/tfds") | (env or {})
  flags = [f"--config.{key}={value}" for key, value in overrides.items()]
  command = [sys.executable, str(ROOT / script), f"--workdir={workdir}", *([f"--config={config}"] if config else []),
             *flags, *extra]
  if popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, **popen)
  return subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)


def final_params(workdir, config):
  experiment = experiments.Experiment(config, sources.describe(config))
  checkpointer = experiment.checkpointer(workdir, read_only=True)
  _, params, *_ = checkpointer.restore(experiment.abstract_state.params)
  checkpointer.close()
  return jax.device_get(params)


def strict_metrics(workdir):
  """metrics.jsonl as strict JSON (no NaN/Infinity), checked to hold each (step, split) once."""
  refuse = lambda constant: pytest.fail(f"metrics.jsonl holds {constant}")
  lines = [json.loads(line, parse_constant=refuse)
           for line in (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  keys = [(line["step"], line["split"]) for line in lines]
  assert len(keys) == len(set(keys)), keys
  return lines


def start(script, workdir, overrides, log, **kwargs):
  """`run_script` in the background, its output (stdout and stderr) written to the file `log`."""
  with open(log, "w") as out:
    return run_script(script, workdir, overrides, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def wait_for(happened, missing, processes, logs, timeout=300):
  """Polls `happened()` until it holds. If a process ends first, or after `timeout` s (the processes are then
  killed), fails saying what is `missing` ("wrote no checkpoint"), with the processes' output."""
  deadline = time.monotonic() + timeout
  while not happened():
    ended = [process.returncode for process in processes if process.poll() is not None]
    if ended and happened():
      return
    if ended or time.monotonic() > deadline:
      for process in processes:
        process.kill()
        process.wait()
      what = f"ended (status {ended[0]}) and {missing}" if ended else f"{missing} within {timeout} s"
      output = "\n".join(f"--- {log}:\n{pathlib.Path(log).read_text()[-4000:]}" for log in logs)
      pytest.fail(f"{pathlib.Path(processes[0].args[1]).name} {what}; its output:\n{output}")
    time.sleep(0.01)


def saved_steps(workdir):
  """The steps of the complete checkpoints in workdir (Orbax names a step's folder by its number once saved)."""
  folder = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def logged(workdir):
  """Every line of metrics.jsonl (strict), without its timings (steps, examples, tokens per second)."""
  return [{k: v for k, v in line.items() if not k.endswith("_per_s")} for line in strict_metrics(workdir)]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_takes_a_training_step(name, tmp_path):
  config = small_config(name, tmp_path, **{"train.num_steps": 1})
  final = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert set(final) == set(config.eval.splits)
  logged = read_metrics(tmp_path / "run")[0]
  assert np.isfinite(logged["loss"]) and ("tokens_per_s" in logged) == (config.model.name == "lm")
  if config.model.name == "segmenter":
    assert 0.0 <= final["validation"]["mean_iou"] <= 1.0


@pytest.mark.parametrize("name", LRA_SMALL)
def test_lra_small_variants_build_and_take_a_training_step(name, tmp_path):
  """`configs/lra_*.py:small`: the Nystromformer-line model as set (2 x 64, 2 heads, FFN 128), tiny data."""
  config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config("small")
  stack = config.model.transformer
  assert (stack.num_layers, stack.model_dim, stack.num_heads, stack.mlp_dim, stack.dropout_rate, config.model.pooling,
          config.model.head_hidden, config.model.interaction) == (2, 64, 2, 128, 0.1, "mean", (128,), "nli")
  assert (config.optimizer.learning_rate, config.optimizer.schedule, config.optimizer.b2,
          config.optimizer.weight_decay) == (1e-4, "linear", 0.999, 0.0)
  from bilateral_jax import cli
  assert cli.default_workdir(f"configs/{name}.py:small") == f"runs/{name}_small"
  assert cli.default_workdir(f"configs/{name}.py") == f"runs/{name}"
  data = {"data.max_length": 32, "data.min_length": 5, "data.train_size": 16, "data.validation_size": 8,
          "data.test_size": 8} if name == "lra_listops" else SAMPLES[name][1] | {"data.directory": str(tmp_path / "data")}
  if name != "lra_listops":
    SAMPLES[name][0](tmp_path / "data")
  config.update_from_flattened_dict(data | {"train.num_steps": 1, "train.batch_size": 8, "eval.batch_size": 8,
                                            "model.transformer.max_length": 1025})
  final = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert all(np.isfinite(metrics["loss"]) for metrics in final.values())


def test_rsqrt_schedule_is_lras_constant_linear_warmup_rsqrt_decay():
  import ml_collections
  opt = ml_collections.ConfigDict(dict(learning_rate=0.05 / 1000**0.5, warmup_steps=1000, schedule="rsqrt",
                                       final_learning_rate_fraction=0.0))
  schedule = experiments.make_schedule(opt, num_steps=5000)
  for step in (0, 1, 500, 999, 1000, 1001, 2500, 4999):
    lra = 0.05 * min(1.0, step / 1000) / max(step, 1000) ** 0.5  # lra_benchmarks/utils/train_utils.py
    np.testing.assert_allclose(float(schedule(step)), lra, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("crash", ["after_a_regular_save", "after_a_best_save"])
def test_resume_after_a_crash_gives_identical_parameters_and_losses(tmp_path, crash, trained_tiny_run):
  config, straight = trained_tiny_run
  interrupted = tmp_path / "interrupted"
  shutil.copytree(straight, interrupted)
  # A crash right after step 3's regular save, or right after step 6's best save (before its regular
  # save): what came later never happened.
  doomed = [interrupted / "checkpoints" / "6"] + ([interrupted / "best" / "6"] if crash == "after_a_regular_save" else [])
  for step_dir in doomed:
    subprocess.run(["rm", "-rf", str(step_dir)], check=True)
  trainer.train_and_evaluate(config, str(interrupted))
  resumed = read_metrics(interrupted)
  assert [m["step"] for m in resumed] == list(range(1, 7))
  assert [m["loss"] for m in resumed] == [m["loss"] for m in read_metrics(straight)]
  strict_metrics(interrupted)
  jax.tree.map(np.testing.assert_array_equal, final_params(interrupted, config), final_params(straight, config))


def test_damaged_newest_checkpoint_falls_back_with_identical_continuation(tmp_path, caplog, trained_tiny_run):
  config, straight = trained_tiny_run
  damaged = tmp_path / "damaged"
  shutil.copytree(straight, damaged)
  for path in (damaged / "checkpoints" / "6" / "params").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a partial copy
  with pytest.raises(CheckpointError, match="checkpoints/6 does not restore"):
    trainer.evaluate_checkpoint(config, str(damaged), step=6)
  step, _, _ = trainer.evaluate_checkpoint(config, str(damaged))
  assert step == 3 and "checkpoints/6 does not restore" in caplog.text
  assert (damaged / "checkpoints" / "6").is_dir()  # kept for a look
  trainer.train_and_evaluate(config, str(damaged))
  assert [m["loss"] for m in read_metrics(damaged)] == [m["loss"] for m in read_metrics(straight)]
  jax.tree.map(np.testing.assert_array_equal, final_params(damaged, config), final_params(straight, config))


def test_a_failed_restores_late_loop_callbacks_are_dropped_and_nothing_else():
  # An error Python cannot raise to anyone goes to sys.unraisablehook, as TensorStore's do after a damaged
  # step's restore; in a process of its own, since pytest replaces the hook during a test.
  script = ("import bilateral_jax.checkpointing\n"
            "class Raises:\n  def __init__(self, message): self.message = message\n"
            "  def __del__(self): raise RuntimeError(self.message)\n"
            "Raises('Event loop is closed')\nRaises('something else')\n")
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert "Event loop is closed" not in done.stderr and "RuntimeError: something else" in done.stderr, done.stderr


def test_resume_refuses_changes_that_would_corrupt_the_run(tmp_path):
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), str(tmp_path))
  with pytest.raises(trainer.ResumeRefused, match=r"train.batch_size is 16 .* trained with 8"):
    trainer.train_and_evaluate(tiny_config(**{"train.batch_size": 16}), str(tmp_path))
  with pytest.raises(trainer.ResumeRefused, match="train.num_steps=2 is below the checkpoint's step 3"):
    trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 2}), str(tmp_path))
  no_clip = tiny_config(**{"optimizer.clip_norm": 0.0})
  with pytest.raises(trainer.ResumeRefused, match=r"optimizer.clip_norm changed.*--fresh_optimizer"):
    trainer.train_and_evaluate(no_clip, str(tmp_path))
  step, _, _ = trainer.evaluate_checkpoint(no_clip, str(tmp_path))  # parameters only: any optimiser will do
  assert step == 3
  trainer.train_and_evaluate(no_clip, str(tmp_path), fresh_optimizer=True)
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["clip_norm"] == 0.0
  assert [m["step"] for m in strict_metrics(tmp_path) if m["split"] == "train"] == list(range(1, 7))


def test_a_diverging_run_never_replaces_a_finite_best_checkpoint(tmp_path):
  short = {"train.num_steps": 2, "train.checkpoint_every": 2, "train.eval_every": 2, "train.log_every": 100}
  trainer.train_and_evaluate(tiny_config(**short), str(tmp_path))
  diverging = tiny_config(**short | {"train.num_steps": 20, "optimizer.learning_rate": 1e30})
  with pytest.raises(trainer.TrainingDiverged, match="non-finite .* at step 4"):
    trainer.train_and_evaluate(diverging, str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / "best").iterdir()) == [2]
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2]
  strict_metrics(tmp_path)


def test_eval_batch_is_padded_to_any_device_count(tmp_path):
  config = tiny_config(**{"eval.batch_size": 250})
  experiment = experiments.Experiment(config, sources.describe_split(config.data, "train"))
  assert jax.device_count() == 8 and experiment.eval_batch_size == 256
  params = experiment.init(jax.random.key(0)).params
  reference = experiments.Experiment(tiny_config(), experiment.data).evaluate(params, "validation")
  padded = experiment.evaluate(params, "validation")
  assert padded["examples"] == reference["examples"] == 24
  np.testing.assert_allclose(padded["loss"], reference["loss"], rtol=1e-6)


RESTARTED = TINY | {"train.num_steps": 12, "train.checkpoint_every": 2, "train.eval_every": 4}  # several saves


@pytest.fixture(scope="session")  # built once per test worker, whatever order its tests run in
def uninterrupted_run(tmp_path_factory):
  """`train.py` with RESTARTED's settings from start to end in one process -> (its workdir, the environment in
  which another run reads the TFDS data it built)."""
  run = tmp_path_factory.mktemp("uninterrupted") / "run"
  done = run_script("train.py", run, RESTARTED)
  assert done.returncode == 0, done.stderr
  return run, {"TFDS_DATA_DIR": str(run / "tfds")}


def assert_bit_identical_runs(run, reference):
  """The same numbers logged (all but timings) and the same final parameters, bit for bit."""
  assert logged(run) == logged(reference)
  config = tiny_config(**RESTARTED)
  jax.tree.map(np.testing.assert_array_equal, final_params(run, config), final_params(reference, config))


def test_sigkill_mid_run_then_the_same_command_resumes_bit_identically(tmp_path, uninterrupted_run):
  """Killed outright once a checkpoint is on disk (the lock left behind, maybe a half-written step and
  lines of steps past the checkpoint), then restarted by the same command in a new process."""
  reference, data = uninterrupted_run
  run, log = tmp_path / "run", tmp_path / "killed.log"
  killed = start("train.py", run, RESTARTED, log, env=data)
  wait_for(lambda: saved_steps(run), "wrote no checkpoint", [killed], [log])
  killed.kill()
  killed.wait()
  resumed = run_script("train.py", run, RESTARTED, env=data)
  assert resumed.returncode == 0, resumed.stderr
  step = re.search(r"resumed from step (\d+)", resumed.stdout)
  assert step and 2 <= int(step.group(1)) < RESTARTED["train.num_steps"], resumed.stdout  # killed mid-run
  assert_bit_identical_runs(run, reference)


def test_sigterm_saves_and_the_same_command_resumes(tmp_path, uninterrupted_run):
  """SIGTERM once a checkpoint is on disk: saved, status 3; the same command in a new process resumes to the
  parameters and logged numbers of a run never interrupted, and once more has nothing left to train."""
  reference, data = uninterrupted_run
  run, log = tmp_path / "run", tmp_path / "terminated.log"
  process = start("train.py", run, RESTARTED, log, env=data)
  wait_for(lambda: saved_steps(run), "wrote no checkpoint", [process], [log])
  process.send_signal(signal.SIGTERM)
  process.wait(timeout=300)
  output = log.read_text()
  assert process.returncode == 3, output
  assert "pre-empted" in output and "resume with the same command" in output
  saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir())  # each step saved whole
  assert saved[-1] == read_metrics(run)[-1]["step"] < RESTARTED["train.num_steps"], output  # stopped mid-run
  resumed = run_script("train.py", run, RESTARTED, env=data)
  assert resumed.returncode == 0, resumed.stderr
  assert f"resumed from step {saved[-1]}" in resumed.stdout
  done = run_script("train.py", run, RESTARTED, env=data)  # nothing left to do
  assert done.returncode == 0 and "test: accuracy" in done.stdout, done.stderr
  assert_bit_identical_runs(run, reference)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_saved_step(tmp_path):
  overrides = TINY | {"train.num_steps": 100_000, "train.checkpoint_every": 100_000}
  port = portpicker.pick_unused_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  processes = [start("train.py", tmp_path / "run", overrides, logs[i], devices=4,
                     extra=[f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"])
               for i in range(2)]
  metrics = tmp_path / "run" / "metrics.jsonl"
  wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, "logged no third step", processes,
           logs)
  processes[1].send_signal(signal.SIGTERM)
  for process, log in zip(processes, logs):
    process.wait(timeout=300)
    assert process.returncode == 3, log.read_text()
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
  assert saved and saved[-1] == read_metrics(tmp_path / "run")[-1]["step"]


def test_one_and_eight_devices_and_two_processes_give_the_same_losses(tmp_path, trained_tiny_run):
  _, eight_devices = trained_tiny_run
  assert jax.device_count() == 8
  one = run_script("train.py", tmp_path / "one", TINY, devices=1)
  assert one.returncode == 0, one.stderr
  port = portpicker.pick_unused_port()
  processes = [run_script("train.py", tmp_path / "two_hosts", TINY, devices=4,
                          extra=[f"--coordinator_address=localhost:{port}", "--num_processes=2",
                                 f"--process_id={i}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(2)]
  for process in processes:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
  eight = read_metrics(eight_devices)
  for other in ("one", "two_hosts"):
    losses = [m["loss"] for m in read_metrics(tmp_path / other)]
    np.testing.assert_allclose(losses, [m["loss"] for m in eight], rtol=2e-5, err_msg=other)
    np.testing.assert_allclose(read_metrics(tmp_path / other, "test")[-1]["accuracy"],
                               read_metrics(eight_devices, "test")[-1]["accuracy"])


def test_eval_restores_onto_one_device_and_reproduces_the_logged_numbers(tmp_path, trained_tiny_run):
  config, trained = trained_tiny_run
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  final = {m["split"]: {k: v for k, v in m.items() if k not in ("step", "split")}  # what training returned
           for m in strict_metrics(run) if m["step"] == 6 and m["split"] != "train"}
  step, again, _ = trainer.evaluate_checkpoint(config, str(run))
  assert step == 6 and again == final
  result = run_script("eval.py", run, {}, devices=1)  # the run's own config.json
  assert result.returncode == 0, result.stderr
  written = json.loads((run / "eval" / "6.json").read_text())["results"]
  for split in ("validation", "test"):
    for name in ("loss", "accuracy"):
      np.testing.assert_allclose(written[split][name], final[split][name], rtol=1e-5)
  assert "validation" in result.stdout and "accuracy" in result.stdout
  best = run_script("eval.py", run, TINY, devices=1, extra=["--best"])
  assert best.returncode == 0, best.stderr
  best_step = json.loads(next((run / "eval").glob("best_*.json")).read_text())["step"]
  assert json.loads((run / "eval" / "6.json").read_text())["results"] == written  # not overwritten
  assert (run / "best").is_dir() and best_step in (3, 6)
  only_test = run_script("eval.py", run, {"eval.splits": "test"}, devices=1, extra=["--step=3"])
  assert only_test.returncode == 0, only_test.stderr
  assert list(json.loads((run / "eval" / "3.json").read_text())["results"]) == ["test"]
  assert "examples" in only_test.stdout and "        16" in only_test.stdout  # a count, not 16.0000


def test_half_written_step_is_skipped_and_other_models_are_refused(tmp_path, caplog, trained_tiny_run):
  config, trained = trained_tiny_run
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  half = run / "checkpoints" / "9.orbax-checkpoint-tmp-1700000000000000"
  half.mkdir()
  (half / "params").mkdir()
  step, _, _ = trainer.evaluate_checkpoint(config, str(run))
  assert step == 6 and half.is_dir()  # read-only: it may be a training's save in progress
  trainer.train_and_evaluate(config, str(run))  # complete: evaluates and returns
  assert "half-written checkpoint" in caplog.text and not half.exists()
  other = tiny_config(**{"model.transformer.num_layers": 2, "model.transformer.attention": "standard"})
  with pytest.raises(CheckpointMismatch, match=r"(?s)transformer.attention: checkpoint 'bilateral', "
                     r"config 'standard'.*transformer.num_layers: checkpoint 1, config 2"):
    trainer.evaluate_checkpoint(other, str(run))
  with pytest.raises(CheckpointError, match="no checkpoints in"):
    trainer.evaluate_checkpoint(config, str(run / "typo"))
  assert not (run / "typo").exists()


def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 1,
                          "optimizer.clip_norm": 0.0, "train.checkpoint_every": 1, "train.num_steps": 20})
  with pytest.raises(trainer.TrainingDiverged, match="non-finite training metrics at step 2"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1]
  params = final_params(tmp_path, config)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_metrics_files_and_logged_filter_parameters(tmp_path):
  trainer.train_and_evaluate(tiny_config(**{"model.transformer.grc_sublayers": ("attention", "mlp")}),
                             str(tmp_path))
  train = read_metrics(tmp_path)
  assert [m["step"] for m in train] == list(range(1, 7))
  first = train[0]
  for name in ("loss", "accuracy", "grad_norm", "param_norm", "learning_rate", "steps_per_s",
               "examples_per_s", "h_y/block_0", "h_p/block_0", "t_attention/block_0", "t_mlp/block_0"):
    assert name in first, name
  assert len(first["h_p/block_0"]) == 2 * 2 and 0 < first["t_attention/block_0"] < 1  # (before, after) per head
  assert {m["step"] for m in read_metrics(tmp_path, "validation")} == {3, 6}
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert [event.step for event in events.Scalars("train/loss")] == list(range(1, 7))
  assert "train/h_p/block_0/1" in events.Tags()["scalars"] and "config/text_summary" in events.Tags()["tensors"]
  assert (tmp_path / "plots" / "curves.png").stat().st_size > 10_000
  overlay = subprocess.run([sys.executable, "plot.py", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "two.png")],
                           cwd=ROOT, capture_output=True, text=True)
  assert overlay.returncode == 0 and (tmp_path / "two.png").exists(), overlay.stderr


def test_bad_config_input_ends_the_process_with_one_line_and_status_2_before_any_data(tmp_path):
  """A misspelt field, found while cli.py is imported (before any flag is parsed): the real process."""
  result = run_script("train.py", tmp_path, {"train.num_stepz": 3})
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "unknown config field config.train.num_stepz (did you mean num_steps?)" in result.stderr
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tfds").exists()


def train_py_in_this_process(workdir, overrides, monkeypatch, capsys):
  """`python train.py --workdir=W --config.<field>=<value>...` (at test size) through cli.run, its flags parsed
  and errors reported as in its own process, here -> (exit status, stderr). absl's app.run, which parses flags
  once per process, is reduced to parse-then-main; os._exit raises SystemExit; the flags and log levels this
  sets are put back after."""
  import train  # noqa: PLC0415 - defines train.py's flags once, here only
  from bilateral_jax import cli  # noqa: PLC0415
  defined, parsed, verbosity = set(cli.FLAGS), cli.FLAGS.is_parsed(), absl_logging.get_verbosity()
  levels = {name: logging.getLogger(name).level for name in ("absl", "tensorflow_datasets", "orbax", "jax")}
  fields = TINY | {"data.tfds_dir": str(workdir / "tfds")} | overrides
  monkeypatch.setattr(sys, "argv", ["train.py", f"--workdir={workdir}", f"--config={cli.DEFAULT_CONFIG}",
                                    *(f"--config.{key}={value}" for key, value in fields.items())])
  monkeypatch.setattr(cli.app, "run", lambda main, flags_parser: main(flags_parser(sys.argv)))

  def exit_now(status):
    raise SystemExit(status)

  monkeypatch.setattr(cli.os, "_exit", exit_now)
  capsys.readouterr()
  try:
    with pytest.raises(SystemExit) as ended:
      cli.run(train.main)
  finally:
    for name in set(cli.FLAGS) - defined:  # the --config.<field> flags ml_collections defined from argv
      delattr(cli.FLAGS, name)
    cli.FLAGS.unparse_flags()
    if parsed:
      cli.FLAGS.mark_as_parsed()
    absl_logging.set_verbosity(verbosity)
    for name, level in levels.items():
      logging.getLogger(name).setLevel(level)
  return ended.value.code, capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ({"train.num_steps": "many"}, "config.train.num_steps=many"),
    ({"model.transformer.attention": "linear"}, "attention='linear' is not one of"),
    ({"optimizer.learning_rate": -1.0}, "optimizer.learning_rate=-1.0 must be positive"),
    ({"mesh.fsdp_min_size": -1}, "mesh.fsdp_min_size=-1 must be an integer >= 0"),
    ({"data.tfds_dir": "/dev/null/x", "train.batch_size": 12}, "train.batch_size 12 must be divisible by devices (8)"),
])
def test_bad_config_input_is_one_line_and_status_2_before_any_data(tmp_path, override, message, monkeypatch, capsys):
  status, stderr = train_py_in_this_process(tmp_path, override, monkeypatch, capsys)
  assert status == 2, stderr
  assert stderr.strip().splitlines() == [stderr.strip()] and message in stderr
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tfds").exists()


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
  # 8 devices x 2 micro-batches: 16 rows per batch.
  whole = tiny_config(**{"train.num_steps": 2, "train.batch_size": 16})
  accumulated = tiny_config(**{"train.num_steps": 2, "train.batch_size": 16, "train.grad_accum_steps": 2})
  trainer.train_and_evaluate(whole, str(tmp_path / "whole"))
  trainer.train_and_evaluate(accumulated, str(tmp_path / "accumulated"))
  np.testing.assert_allclose([m["loss"] for m in read_metrics(tmp_path / "accumulated")],
                             [m["loss"] for m in read_metrics(tmp_path / "whole")], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               final_params(tmp_path / "accumulated", accumulated), final_params(tmp_path / "whole", whole))


def test_fsdp_mesh_and_bfloat16_train_and_restore_onto_another_mesh(tmp_path, capsys, trained_tiny_run):
  _, data_only = trained_tiny_run
  fsdp = tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2, "mesh.fsdp_min_size": 0})  # the tiny model's arrays too
  capsys.readouterr()
  trainer.train_and_evaluate(fsdp, str(tmp_path / "fsdp"))
  summary = capsys.readouterr().out
  assert "fsdp: parameters " in summary and "attention: bilateral via xla (layer 0)" in summary  # start-up lines
  experiment = experiments.Experiment(fsdp, sources.describe(fsdp))
  sharded = [s for s in jax.tree.leaves(experiment.state_sharding) if "fsdp" in str(s.spec)]
  assert sharded, "no parameter is sharded over the fsdp axis"
  default_minimum = experiments.Experiment(tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2}),
                                           experiment.data).state_sharding
  assert not any("fsdp" in str(s.spec) for s in jax.tree.leaves(default_minimum))  # all under 2**14 elements
  np.testing.assert_allclose([m["loss"] for m in read_metrics(tmp_path / "fsdp")],
                             [m["loss"] for m in read_metrics(data_only)], rtol=2e-5)
  # onto the data-only mesh, and into a rematerialised model (not part of the checkpoint's identity)
  _, results, _ = trainer.evaluate_checkpoint(tiny_config(**{"model.transformer.remat": "full"}), str(tmp_path / "fsdp"))
  np.testing.assert_allclose(results["test"]["loss"], read_metrics(tmp_path / "fsdp", "test")[-1]["loss"],
                             rtol=1e-5)
  bf16 = tiny_config(**{"model.transformer.dtype": "bfloat16"})
  final = trainer.train_and_evaluate(bf16, str(tmp_path / "bf16"))
  params = final_params(tmp_path / "bf16", bf16)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  bf16_losses = [m["loss"] for m in read_metrics(tmp_path / "bf16")]
  np.testing.assert_allclose(bf16_losses, [m["loss"] for m in read_metrics(data_only)], rtol=0.05)
  assert bf16_losses != [m["loss"] for m in read_metrics(data_only)]


def run_processes(script, workdir, overrides, *, devices=1, count=2, extra=(), timeout=300, hosts=None):
  """`count` processes of one run (jax.distributed over localhost) -> their (returncode, output). hosts:
  a folder under which each process gets its own home and TFDS data directory, as the hosts of a pod
  each have their own disk (default: they share the work directory's)."""
  port = portpicker.pick_unused_port()
  own_disk = lambda i: {"HOME": str(hosts / f"host{i}"), "TFDS_DATA_DIR": str(hosts / f"host{i}" / "tfds")}
  processes = [run_script(script, workdir, overrides, devices=devices, env=own_disk(i) if hosts else None,
                          extra=[f"--coordinator_address=localhost:{port}", f"--num_processes={count}",
                                 f"--process_id={i}", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(count)]
  outputs = [process.communicate(timeout=timeout)[0] for process in processes]
  return [(process.returncode, output) for process, output in zip(processes, outputs)]


def test_parameters_sharded_across_two_processes_with_their_own_disks_train_resume_and_evaluate_as_one(tmp_path):
  fsdp = TINY | {"mesh.data": 1, "mesh.fsdp": 2, "mesh.fsdp_min_size": 0}
  one = run_script("train.py", tmp_path / "one", fsdp, devices=2)
  assert one.returncode == 0, one.stderr
  two, hosts = tmp_path / "two", tmp_path / "hosts"  # one work directory; no data directory shared
  for steps in (3, 6):  # train, checkpoint, resume
    outputs = run_processes("train.py", two, fsdp | {"train.num_steps": steps}, hosts=hosts)
    for returncode, output in outputs:
      assert returncode == 0, output
  assert "resumed from step 3" in output
  assert all(list((hosts / f"host{i}" / "tfds").glob("*/*/*/dataset_info.json")) for i in range(2))
  for returncode, output in run_processes("eval.py", two, {}, hosts=hosts):
    assert returncode == 0, output
  # Not bit for bit: resumed in two processes, a run sometimes repeats the bits of an uninterrupted one (which
  # are one process's) and sometimes gives GRC's t another first update after the restore, the rest following
  # within float32 rounding. The restored state is the same either time; the cause, in the library's
  # multi-process training, is not found yet. Hence tolerances of float32 rounding.
  np.testing.assert_allclose([m["loss"] for m in read_metrics(two)], [m["loss"] for m in read_metrics(tmp_path / "one")],
                             rtol=1e-6)
  assert read_metrics(two)[0]["h_p/block_0"] == read_metrics(tmp_path / "one")[0]["h_p/block_0"]
  config = tiny_config()  # restores the fsdp run onto this process's data-only mesh
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * np.max(np.abs(b))),
               final_params(two, config), final_params(tmp_path / "one", config))
  evaluated = json.loads((two / "eval" / "6.json").read_text())["results"]["test"]
  np.testing.assert_allclose(evaluated["loss"], read_metrics(tmp_path / "one", "test")[-1]["loss"], rtol=1e-5)


def evaluated_step(evaluation):
  """The step of the checkpoint eval.py evaluated (its "written to DIR/eval/<step>.json" line)."""
  written = re.search(r"eval/(\d+)\.json", evaluation)
  assert written, evaluation
  return int(written.group(1))


def test_eval_beside_a_training_that_saves_every_step_and_a_second_run_refused(tmp_path):
  """The training paused mid-run (SIGSTOP), alive and holding its lock: a second train.py is refused and eval.py
  evaluates one of its checkpoints; then eval.py again, started before the training runs on beside it. The
  training is never disturbed."""
  overrides = TINY | {"train.num_steps": 20, "train.checkpoint_every": 1, "train.eval_every": 10,
                      "train.keep_checkpoints": 1, "train.log_every": 5}
  run, log, eval_log = tmp_path / "run", tmp_path / "train.log", tmp_path / "eval.log"
  training = start("train.py", run, overrides, log, devices=1)
  try:
    wait_for(lambda: saved_steps(run), "wrote no checkpoint", [training], [log])
    training.send_signal(signal.SIGSTOP)
    assert training.poll() is None, f"train.py finished before it could be paused: {log.read_text()}"
    second = run_script("train.py", run, overrides, devices=1)
    assert second.returncode == 2 and f"{run} is in use by pid {training.pid}" in second.stderr, second.stderr
    paused = run_script("eval.py", run, {}, devices=1)
    assert paused.returncode == 0, paused.stderr[-4000:]
    assert evaluated_step(paused.stdout) < overrides["train.num_steps"]  # a checkpoint of the unfinished run
    beside = start("eval.py", run, {}, eval_log, devices=1)
    training.send_signal(signal.SIGCONT)
    beside.wait(timeout=300)
    assert beside.returncode == 0, eval_log.read_text()[-4000:]
    assert evaluated_step(eval_log.read_text()) >= evaluated_step(paused.stdout)
    training.wait(timeout=300)
  except BaseException:
    training.kill()
    raise
  assert training.returncode == 0, log.read_text()
  assert [m["step"] for m in strict_metrics(run) if m["split"] == "train"] == list(range(1, 21))  # each saved, logged
  assert not (run / "lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  (tmp_path / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}))
  lock = runs.Lock(tmp_path)
  lock.acquire()
  assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  with pytest.raises(runs.WorkdirInUse, match=f"in use by pid {os.getpid()}"):
    runs.Lock(tmp_path).acquire()
  lock.release()
  assert not (tmp_path / "lock").exists()


def test_jobs_sharing_a_fresh_tfds_dir_build_it_once_and_a_dry_run_reads_no_data(tmp_path):
  shared = {"data.tfds_dir": str(tmp_path / "tfds_shared"), "train.num_steps": 2, "train.eval_every": 2}
  jobs = [run_script("train.py", tmp_path / f"job{i}", TINY | shared, devices=1, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [job.communicate(timeout=300)[0] for job in jobs]
  assert [job.returncode for job in jobs] == [0, 0], outputs
  assert sum(output.count("building dataset") for output in outputs) == 1, outputs
  bigger = {"data.tfds_dir": str(tmp_path / "fresh"), "mesh.data": 8, "mesh.fsdp": 2, "train.batch_size": 16}
  dry = run_script("train.py", tmp_path / "dry", TINY | bigger, devices=1, extra=["--dry_run"])
  assert dry.returncode == 0, dry.stderr
  assert "mesh data=8 fsdp=2" in dry.stdout and "GFLOP per step" in dry.stdout and "MiB" in dry.stdout
  assert "data: listops_generated not read (built from the config alone)" in dry.stdout
  assert not (tmp_path / "dry").exists() and not (tmp_path / "fresh").exists()  # no data built, nothing written


def test_profile_trace_and_help(tmp_path):
  trainer.train_and_evaluate(tiny_config(**{"train.profile_steps": 2}), str(tmp_path))
  assert list((tmp_path / "profile").rglob("*.xplane.pb"))
  for script, flag in (("train.py", "fresh_optimizer"), ("eval.py", "best")):
    shown = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert flag in shown.stdout and "--workdir" in shown.stdout, shown.stdout


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_imports_from_another_directory(tmp_path):
  """The package's declared dependencies, resolved with the lock's versions (pip's cache makes it quick)."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c",
                            str(ROOT / "requirements.lock"), "-e", f"{ROOT}[test]"], capture_output=True, text=True)
  assert install.returncode == 0, install.stderr[-3000:]
  check = subprocess.run([str(venv / "bin" / "python"), "-c", "import bilateral_jax.trainer, pytest, portpicker; "
                          "print(bilateral_jax.trainer.__file__)"], cwd=tmp_path, capture_output=True, text=True)
  assert check.returncode == 0 and str(ROOT) in check.stdout, check.stderr


def test_deit_variants_follow_deits_recipe():
  """`configs/deit_tiny_imagenet.py` and its `:small` (DeiT-Small) variant, as the docstring states them."""
  module = __import__("configs.deit_tiny_imagenet", fromlist=["get_config"])
  for variant, (width, heads) in (("", (192, 3)), ("small", (384, 6))):
    config = module.get_config(variant)
    experiments.check_settings(config)
    stack, opt = config.model.transformer, config.optimizer
    assert (stack.num_layers, stack.model_dim, stack.num_heads, stack.mlp_dim, stack.drop_path_rate) == (
        12, width, heads, 4 * width, 0.1)
    assert (opt.learning_rate, opt.b1, opt.b2, opt.weight_decay, opt.clip_norm, opt.warmup_steps) == (
        1e-3, 0.9, 0.999, 0.05, 0.0, 6_250)
    assert opt.learning_rate * opt.final_learning_rate_fraction == pytest.approx(1e-5)
    assert config.train.num_steps * config.train.batch_size == pytest.approx(300 * 1_281_167, rel=1e-3)
  with pytest.raises(ValueError, match="unknown config variant 'base'"):
    module.get_config("base")


def test_a_trained_model_restores_from_its_saved_config_with_no_dataset_present(tmp_path):
  """A run's saved config holds the data-given sizes, so its model and parameters come back with the
  dataset gone, and compute what the run's own model computes."""
  tfds_dir = tmp_path / "tfds"
  trainer.train_and_evaluate(tiny_config(**{"data.tfds_dir": str(tfds_dir)}), str(tmp_path / "run"))
  config = runs.load_config(tmp_path / "run")
  data = sources.describe_eval(config)
  with_data, step, params = trainer.restore_params(config, str(tmp_path / "run"), data)
  batch = experiments.example_batch(with_data.data.example, 4, with_data.eval_transform)
  batch["inputs"] = np.random.default_rng(0).integers(1, config.model.vocab_size, batch["inputs"].shape)
  expected = with_data.model.apply({"params": params}, batch["inputs"])
  shutil.rmtree(tfds_dir)
  alone, alone_step, alone_params = trainer.restore_params(config, str(tmp_path / "run"), sources.describe(config))
  assert alone_step == step == 6 and alone.identity == with_data.identity and not alone.data.assumed
  jax.tree.map(np.testing.assert_array_equal, alone_params, params)
  np.testing.assert_array_equal(alone.model.apply({"params": alone_params}, batch["inputs"]), expected)
  assert not tfds_dir.exists()


def test_an_old_config_with_attention_implementation_loads_and_evaluates(tmp_path, trained_tiny_run):
  """A config.json written before the rename (`model.transformer.attention_implementation`) loads as
  `attention_path`, differs from the current config in nothing, and its checkpoint restores."""
  config, trained = trained_tiny_run
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  saved = json.loads((run / "config.json").read_text())
  saved["model"]["transformer"]["attention_implementation"] = saved["model"]["transformer"].pop("attention_path")
  (run / "config.json").write_text(json.dumps(saved))
  old = runs.load_config(run)
  assert "attention_implementation" not in old.model.transformer
  assert old.model.transformer.attention_path == config.model.transformer.attention_path
  assert runs.changes(old, config) == {}
  assert experiments.model_settings(old) == experiments.model_settings(config)
  step, results, _ = trainer.evaluate_checkpoint(old, str(run))
  assert step == 6 and results
