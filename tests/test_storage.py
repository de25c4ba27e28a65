"""Runs on an object store: train, resume, eval.py, study.py and diagnose.py with a `gs://` work directory
on a real GCS JSON API served on loopback (gcp-storage-emulator), nothing created locally but the TFDS
data (array-record reads local files only: a `gs://` TFDS directory is refused); the resume bit-identical
to a local run; the lock there, which refuses a live holder and takes over a stale one; and the published
datasets' files read from `gs://`, equal to their local copies."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jax
import ml_collections
import numpy as np
import portpicker
import pytest
from etils import epath

from bilateral_jax import runs
from bilateral_jax.data import sources
from tests.samples import write_image_folders, write_pathfinder, write_text_corpus, write_wikitext
from tests.test_training import ROOT, TINY, final_params, logged, read_metrics, run_script


def _answers(url: str) -> bool:
  """Whether an HTTP server answers at `url` (any status)."""
  try:
    urllib.request.urlopen(url, timeout=5).close()
  except urllib.error.HTTPError:
    return True
  except OSError:
    return False
  return True


@pytest.fixture(scope="session")  # built once per test worker, whatever order its tests run in
def gcs(tmp_path_factory):
  """The environment that points TensorStore (Orbax), gcsfs (etils.epath) and google-cloud-storage
  (tensorboardX) at a fresh in-memory GCS server with the bucket `bkt`."""
  port = portpicker.pick_unused_port()
  url = f"http://localhost:{port}"
  log = tmp_path_factory.mktemp("gcs") / "server.log"
  with open(log, "w") as out:
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gcs_server.py"), "start", "--port", str(port),
                               "--in-memory", "--default-bucket", "bkt"], stdout=out, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 300
  while not _answers(f"{url}/storage/v1/b/bkt"):
    if server.poll() is not None or time.monotonic() > deadline:
      server.kill()
      server.wait()
      pytest.fail(f"the GCS emulator did not answer at {url} within 300 s (status {server.returncode}); its "
                  f"output:\n{log.read_text()[-4000:]}")
    time.sleep(0.1)
  env = {"TENSORSTORE_GCS_HTTP_URL": url, "STORAGE_EMULATOR_HOST": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x"}
  saved = {name: os.environ.get(name) for name in env}
  os.environ.update(env)  # for this process's own reads (epath) of what the scripts wrote
  yield env
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  server.terminate()
  server.wait()


def test_a_gs_workdir_trains_resumes_evaluates_and_studies_with_nothing_local(gcs, tmp_path, trained_tiny_run):
  """Trained to step 3, then resumed by a new process to step 6, in `gs://`: bit for bit the parameters and
  logged numbers of the shared local run (the same settings and devices, uninterrupted, in this process)."""
  run, env = "gs://bkt/run", gcs | {"TFDS_DATA_DIR": str(tmp_path / "tfds"), "HOME": str(tmp_path / "home")}
  refused = run_script("train.py", run, TINY, devices=1, env=gcs | {"TFDS_DATA_DIR": "gs://bkt/tfds"})
  assert refused.returncode == 2 and "array-record reads and writes local files only" in refused.stderr, refused.stderr
  local_before = sorted(p.name for p in ROOT.iterdir())
  for steps in (3, 6):
    trained = run_script("train.py", run, TINY | {"train.num_steps": steps}, devices=8, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
  assert "resumed from step 3" in trained.stdout
  config, local = trained_tiny_run
  assert logged(run) == logged(local)
  jax.tree.map(np.testing.assert_array_equal, final_params(run, config), final_params(local, config))
  evaluated = run_script("eval.py", run, {}, devices=1, env=env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  diagnosed = run_script("diagnose.py", run, {}, devices=1, env=env, extra=["--examples=4"])
  assert diagnosed.returncode == 0, diagnosed.stderr[-3000:]
  root = epath.Path(run)
  assert {p.name for p in root.iterdir()} >= {"checkpoints", "best", "metrics.jsonl", "tensorboard", "plots",
                                               "config.json", "eval", "diagnostics"}
  assert not (root / "lock").exists()
  assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]  # each step once, resumed
  assert json.loads((root / "eval" / "6.json").read_text())["step"] == 6
  assert (root / "diagnostics" / "depth.json").exists() and (root / "plots" / "curves.png").exists()
  assert {p.name for p in (root / "checkpoints").iterdir()} >= {"6"}

  study_file = tmp_path / "study.json"
  study_file.write_text(json.dumps({"absolute": {"attention": "standard", "residual": "standard"}}))
  studied = run_script("study.py", "gs://bkt/study", TINY | {"train.num_steps": 2, "train.eval_every": 2}, devices=1,
                       env=env, extra=[f"--variants={study_file}", "--seeds=0", "--attacks=pgd", "--epsilons=0.5",
                                       "--pgd_steps=1", "--examples=4"], timeout=600)
  assert studied.returncode == 0, studied.stderr[-3000:]
  assert (epath.Path("gs://bkt/study") / "summary.md").exists()
  assert (epath.Path("gs://bkt/study") / "absolute" / "seed_0" / "result.json").exists()
  assert sorted(p.name for p in ROOT.iterdir()) == local_before  # no `gs:` folder, nothing else
  assert {p.name for p in tmp_path.iterdir()} <= {"home", "study.json", "tfds"}


def test_the_lock_on_an_object_store_refuses_a_live_holder_and_takes_over_a_stale_one(gcs):
  held = runs.Lock("gs://bkt/locked")
  held.acquire()
  with pytest.raises(runs.WorkdirInUse, match=f"in use by pid {os.getpid()}"):
    runs.Lock("gs://bkt/locked").acquire()
  held.release()
  assert not held.path.exists()
  other_host = {"host": "elsewhere", "pid": 1, "token": "t", "started": "then"}
  held.path.write_text(json.dumps(other_host | {"heartbeat": time.time()}))
  with pytest.raises(runs.WorkdirInUse, match="on elsewhere"):  # a pid on another host says nothing
    runs.Lock("gs://bkt/locked").acquire()
  held.path.write_text(json.dumps(other_host | {"heartbeat": time.time() - runs.Lock.STALE_S - 1}))
  taker = runs.Lock("gs://bkt/locked")
  taker.acquire()
  assert json.loads(taker.path.read_text())["pid"] == os.getpid()
  taker.release()


def _upload(local, remote: epath.Path) -> None:
  for path in local.rglob("*"):
    if path.is_file():
      (remote / path.relative_to(local)).parent.mkdir(parents=True, exist_ok=True)
      (remote / path.relative_to(local)).write_bytes(path.read_bytes())


def test_published_data_directories_are_read_from_an_object_store(gcs, tmp_path):
  """A text corpus, WikiText, LRA Pathfinder (converted to TFDS from its files) and ImageNet's folders
  (decoded lazily) in `gs://` give the examples their local copies give."""
  write_text_corpus(tmp_path / "plays")
  write_wikitext(tmp_path / "wikitext")
  write_pathfinder(tmp_path / "pf", count=10, empty=(3,))
  write_image_folders(tmp_path / "imagenet", per_class=2)
  cases = [dict(name="text_corpus", glob="**/*.md", tokenizer="chars", max_length=8, at="plays"),
           dict(name="wikitext", max_length=8, at="wikitext"),
           dict(name="lra_pathfinder", difficulty="hard", at="pf"),
           dict(name="imagenet", image_size=16, crop_fraction=0.875, at="imagenet")]
  for case in cases:
    at = case.pop("at")
    remote = epath.Path("gs://bkt/data") / at
    _upload(tmp_path / at, remote)
    copies = [sources.load_split(ml_collections.ConfigDict(case | {"directory": str(where),
                                                                      "tfds_dir": str(tmp_path / "tfds")}), "train")
              for where in (tmp_path / at, remote)]
    assert len(copies[0]) == len(copies[1]) > 0, case["name"]
    for i in (0, len(copies[0]) - 1):
      for key, value in copies[0][i].items():
        np.testing.assert_array_equal(copies[1][i][key], value, err_msg=f"{case['name']} {key}")
  with pytest.raises(FileNotFoundError, match="wiki.train.tokens.*not found in data.directory='gs://bkt/none'"):
    sources.load_split(ml_collections.ConfigDict(dict(name="wikitext", directory="gs://bkt/none", max_length=8,
                                                      tfds_dir=str(tmp_path / "tfds"))), "train")
