"""Datasets in their published formats (tiny samples written here) and the grain pipelines.

tests/samples.py writes tiny samples of every published format (ListOps TSVs, `wiki.*.tokens`, aclImdb
folders, AAN TSVs, CIFAR-10/100 python files, Pathfinder's release layout, image folders, ADE20k's release
layout, text files). The tests check example counts, labels and tokenisation round trips; the LRA tasks as
LRA's pipelines make them (docs/lra.md); ListOps labels against an evaluator of the generated trees;
Pathfinder's markers against its contours; TFDS catalog datasets through `tfds.testing.mock_data`; that
processes read disjoint parts of the same global batches; that the iterator resumes exactly, with any
number of input workers; data errors that name their file and line."""
import pickle

import ml_collections
import numpy as np
import pytest

from bilateral_jax.data import augment, core, listops, lra, pipeline, sources
from tests.samples import (write_aan, write_aclimdb, write_ade20k, write_cifar10, write_cifar100, write_image_folders,
                           write_pathfinder, write_text_corpus, write_wikitext)


def data_config(**fields):
  return ml_collections.ConfigDict(fields)


def reference_value(tree) -> int:
  """Evaluates a generated tree directly, without its token form."""
  if isinstance(tree, int):
    return tree
  operator, arguments = tree
  values = [reference_value(a) for a in arguments]
  return {"[MIN": min(values), "[MAX": max(values), "[MED": int(np.median(values)),
          "[SM": sum(values) % 10}[operator]


def lra_generate_tree(rng, depth, max_depth, max_args):
  """LRA's `generate_tree` (lra_benchmarks/data/listops.py), rewritten: -> (tree, LRA's length)."""
  if depth < max_depth and rng.random() <= 0.25:
    operator, arguments = listops.OPERATORS[rng.integers(4)], []
    length = 2
    for _ in range(rng.integers(2, max_args + 1)):
      argument, argument_length = lra_generate_tree(rng, depth + 1, max_depth, max_args)
      arguments.append(argument)
      length += argument_length
    return (operator, arguments), length
  return int(rng.integers(10)), 1


def lra_pipeline_ids(source: str) -> list[int]:
  """LRA's input pipeline on one `Source` string: `]` renamed `X`, `(` and `)` deleted, whitespace split,
  then tfds' TokenTextEncoder (ids 1 + vocabulary position), here over our vocabulary's order."""
  renamed = source.replace("]", "X").replace("(", "").replace(")", "")
  vocabulary = [token.replace("]", "X") for token in listops.VOCABULARY[1:]]
  return [1 + vocabulary.index(token) for token in renamed.split()]


def test_listops_tokens_labels_lengths_and_determinism():
  assert " ".join(listops.to_tokens(("[MAX", [2, 9]))) == "( ( ( [MAX 2 ) 9 ) ] )"
  assert listops.lra_tokens("( ( ( [MAX 2 ) 9 ) ] )") == ["[MAX", "2", "9", "]"]
  assert listops.VOCABULARY[0] == "<pad>" and list(listops.VOCABULARY[1:]) == sorted(listops.VOCABULARY[1:])
  assert len(listops.VOCABULARY) == 16 and "(" not in listops.VOCABULARY
  rng = np.random.default_rng(0)
  for _ in range(200):
    tree, lra_length = lra_generate_tree(rng, 1, 5, 4)
    string = " ".join(listops.to_tokens(tree))
    assert len(listops.lra_tokens(string)) == lra_length
    assert listops.evaluate(listops.lra_tokens(string)) == listops.evaluate(string.split()) == reference_value(tree)
  spec = listops.ListOpsSpec(max_depth=5, max_args=4, min_length=5, max_length=30, operator_probability=0.5)
  first, again = listops.generate(200, spec, seed=3), listops.generate(200, spec, seed=3)
  assert first == again and first != listops.generate(200, spec, seed=4)
  lengths = [len(tokens) for tokens, _ in first]
  assert min(lengths) == 6 and max(lengths) == 29  # LRA keeps min_length < length < max_length
  assert all("(" not in tokens and ")" not in tokens for tokens, _ in first)
  assert len({" ".join(tokens) for tokens, _ in first}) == 200  # distinct, as LRA's set of trees
  assert all(label == listops.evaluate(tokens) for tokens, label in first)
  with pytest.raises(ValueError, match="malformed"):
    listops.evaluate(["(", "[MAX", "2"])
  with pytest.raises(ValueError, match="no length fits 5 and 6"):
    listops.ListOpsSpec(min_length=5, max_length=6)
  with pytest.raises(ValueError, match="no new expression in 1,000,000 draws after 10 of 11"):
    listops.generate(11, listops.ListOpsSpec(max_depth=1, min_length=0, max_length=2), seed=0)  # only 0-9


def listops_release_config(directory, **fields):
  return data_config(**(dict(name="listops_release", directory=str(directory), tfds_dir=str(directory / "tfds"),
                             max_length=32, overlength="error") | fields))


def test_listops_release_files_load_as_lra_tokenises_them(tmp_path):
  rows = ["( ( ( [MAX 2 ) 9 ) ] )\t9",
          "( ( ( ( [SM 5 ) ( ( ( [MIN 3 ) 8 ) ] ) ) 7 ) ] )\t5",
          "( ( ( ( ( [MED 1 ) 4 ) 6 ) 0 ) ] )\t2", "4\t4"]
  for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
    (tmp_path / name).write_text("Source\tTarget\n" + "\n".join(rows) + "\n")
  longest = max(len(lra_pipeline_ids(row.split("\t")[0])) for row in rows)
  assert longest == 8  # LRA's count of the longest; with parentheses it would be 22 tokens
  source = sources.load_split(listops_release_config(tmp_path, max_length=longest), "validation")
  assert len(source) == 4 and [source[i]["label"] for i in range(4)] == [9, 5, 2, 4]
  for i, row in enumerate(rows):
    want = lra_pipeline_ids(row.split("\t")[0])
    assert source[i]["inputs"].tolist() == want + [0] * (longest - len(want))
    assert listops.evaluate([listops.VOCABULARY[t] for t in want]) == int(row.split("\t")[1])
  with pytest.raises(ValueError, match="up to 8 tokens, more than data.max_length 7"):
    sources.load_split(listops_release_config(tmp_path, max_length=longest - 1), "train")
  truncated = sources.load_split(listops_release_config(tmp_path, max_length=3, overlength="truncate"), "train")
  assert truncated[0]["inputs"].tolist() == [listops.TOKEN_IDS[t] for t in "[MAX 2 9".split()]
  (tmp_path / "basic_test.tsv").write_text("Source\tTarget\n" + rows[0] + "\n( [MAX 2 ]\tx\n")
  with pytest.raises(ValueError, match=r"basic_test.tsv:3: expected"):
    sources.load_split(listops_release_config(tmp_path), "test")
  (tmp_path / "basic_test.tsv").write_text("Source\tTarget\n( [MAX 2 ] @\t3\n")
  with pytest.raises(ValueError, match=r"basic_test.tsv:2: unknown ListOps token '@'"):
    sources.load_split(listops_release_config(tmp_path), "test")
  with pytest.raises(FileNotFoundError, match="basic_train.tsv, basic_val.tsv and basic_test.tsv"):
    sources.load_split(listops_release_config(tmp_path / "nowhere"), "train")


def test_data_errors_name_the_file_and_a_bom_and_blank_lines_are_accepted(tmp_path):
  rows = "Source\tTarget\n( [MAX 2 9 ] )\t9\n4\t4\n"
  for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
    (tmp_path / name).write_text(rows)
  (tmp_path / "basic_val.tsv").write_bytes(b"\xef\xbb\xbf" + rows.encode() + b"\n\n")  # BOM, blank lines
  assert len(sources.load_split(listops_release_config(tmp_path), "validation")) == 2
  (tmp_path / "basic_test.tsv").write_text("Source\tTarget\n")
  with pytest.raises(ValueError, match=r"basic_test.tsv: no examples after the header"):
    sources.load_split(listops_release_config(tmp_path), "test")
  (tmp_path / "basic_test.tsv").write_bytes(rows.encode() + b"( [MIN 3 \xff ] )\t3\n")
  with pytest.raises(ValueError, match=r"basic_test.tsv:4: not UTF-8 text \(byte 0xff"):
    sources.load_split(listops_release_config(tmp_path), "test")
  write_wikitext(tmp_path / "wiki")
  (tmp_path / "wiki" / "wiki.valid.tokens").write_text("")
  config = data_config(name="wikitext", directory=str(tmp_path / "wiki"), tfds_dir=str(tmp_path / "tfds"), max_length=8)
  with pytest.raises(ValueError, match=r"wiki.valid.tokens: no validation text \(an empty file\?\)"):
    sources.load_split(config, "validation")
  write_aan(tmp_path / "aan")
  with (tmp_path / "aan" / "new_aan_pairs.test.tsv").open("a") as f:
    f.write("\n\n")
  aan = data_config(name="lra_retrieval", directory=str(tmp_path / "aan"), tfds_dir=str(tmp_path / "tfds"),
                    max_length=32, overlength="truncate")
  assert len(sources.load_split(aan, "test")) == 10


def test_wikitext_vocabulary_unk_eos_and_contiguous_windows(tmp_path):
  write_wikitext(tmp_path)
  config = data_config(name="wikitext", directory=str(tmp_path), tfds_dir=str(tmp_path / "tfds"), max_length=8)
  train, test = sources.load_split(config, "train"), sources.load_split(config, "test")
  assert train.info == test.info and train.info.vocab_size == 3 + len(set(
      (tmp_path / "wiki.train.tokens").read_text().split()) - {"<unk>"})
  np.testing.assert_array_equal(train.arrays["inputs"][:, 1:], train.arrays["targets"][:, :-1])
  np.testing.assert_array_equal(train.arrays["inputs"][1:, 0], train.arrays["targets"][:-1, -1])
  flat = test.arrays["inputs"].ravel()
  assert (flat == 1).sum() >= 3  # "unseen words here" -> <unk>; the release's own <unk> too
  assert (flat == 2).sum() >= 1  # <eos> after every line
  with pytest.raises(FileNotFoundError, match="wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens"):
    sources.load_split(data_config(name="wikitext", directory=str(tmp_path / "no"), tfds_dir="", max_length=8),
                       "train")


def tf_rgb_to_grayscale(pixel) -> int:
  """LRA's `tf.image.rgb_to_grayscale` on one uint8 pixel, by its formula: convert_image_dtype to float
  (x / 255), the weighted sum, convert_image_dtype back (a truncating cast of y * 255.5)."""
  weights = (0.2989, 0.5870, 0.1140)
  return int(sum(w * c / 255 for w, c in zip(weights, pixel)) * 255.5)


def test_cifar10_python_batches_and_lra_image(tmp_path):
  write_cifar10(tmp_path, per_batch=4)
  config = data_config(name="cifar10", directory=str(tmp_path), tfds_dir="", seed=0, validation_size=5)
  counts = {split: len(sources.load_split(config, split)) for split in core.SPLITS}
  assert counts == {"train": 15, "validation": 5, "test": 4}
  # the formula on pixels where it differs from rounding the weighted sum (0.57 -> 0; 21.5 -> 21)
  for pixel, gray in (((0, 0, 5), 0), ((255, 255, 255), 255), ((10, 20, 30), 18), ((72, 0, 0), 21)):
    assert tf_rgb_to_grayscale(pixel) == gray
    assert lra.rgb_to_grayscale(np.asarray([pixel], np.uint8)).tolist() == [gray]
  lra_config = data_config(name="lra_image", directory=str(tmp_path), tfds_dir="")
  images = {s: sources.load_split(lra_config, s) for s in core.SPLITS}
  assert [len(images[s]) for s in core.SPLITS] == [18, 2, 4]  # train[:90%] / train[90%:] / test of 20 + 4
  raw = []
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    with (tmp_path / name).open("rb") as handle:
      batch = pickle.load(handle, encoding="bytes")
    raw += list(zip(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), batch[b"labels"]))
  for split, offset in (("train", 0), ("validation", 18), ("test", 20)):
    for i in range(len(images[split])):
      image, label = raw[offset + i]
      assert images[split][i]["label"] == label
      for row, col in ((0, 1), (5, 7), (31, 31)):
        assert images[split][i]["inputs"][row * 32 + col] == tf_rgb_to_grayscale(image[row, col]) + 1
  every_pixel = [tf_rgb_to_grayscale(pixel) for pixel in raw[20][0].reshape(-1, 3).astype(np.float64)]
  assert (images["test"][0]["inputs"] - 1).tolist() == every_pixel


def test_aclimdb_and_aan(tmp_path):
  write_aclimdb(tmp_path / "imdb", per_folder=5)
  config = data_config(name="lra_text", directory=str(tmp_path / "imdb"), tfds_dir="", seed=0, max_length=64,
                       validation_size=4, validation_from="train", overlength="truncate")
  train, validation, test = (sources.load_split(config, s) for s in core.SPLITS)
  assert (len(train), len(validation), len(test)) == (6, 4, 10)
  assert sorted(test.arrays["label"].tolist()) == [0] * 5 + [1] * 5
  review = (tmp_path / "imdb" / "test" / "neg" / "0_2.txt").read_text()
  assert test[0]["inputs"].tolist() == [b + 1 for b in review.encode()] + [0] * (64 - len(review.encode()))
  config.validation_from = "test"  # LRA: validation is the test set, train all of train
  lra_splits = [sources.load_split(config, s) for s in core.SPLITS]
  assert [len(s) for s in lra_splits] == [10, 10, 10]
  np.testing.assert_array_equal(lra_splits[1].arrays["inputs"], test.arrays["inputs"])
  truncated = sources.load_split(data_config(**(config.to_dict() | dict(max_length=8))), "test")
  assert truncated[0]["inputs"].tolist() == [b + 1 for b in review.encode()[:8]]  # LRA's [:max_length]
  config.validation_from = "dev"
  with pytest.raises(ValueError, match="validation_from='dev' is not one of: train, test"):
    sources.load_split(config, "train")
  write_aan(tmp_path / "aan", lines=6)
  aan = data_config(name="lra_retrieval", directory=str(tmp_path / "aan"), tfds_dir="", max_length=16,
                    overlength="truncate")
  pairs = sources.load_split(aan, "validation")
  assert len(pairs) == 6 and pairs[0]["inputs"].shape == (2, 16) and pairs[0]["inputs"].dtype == np.int32
  assert [int(pairs[i]["label"]) for i in range(6)] == [0, 1] * 3
  (tmp_path / "aan" / "new_aan_pairs.test.tsv").write_text("1\tonly\tthree fields\n")
  with pytest.raises(ValueError, match=r"new_aan_pairs.test.tsv:1: expected"):
    sources.load_split(aan, "test")


def test_unknown_dataset_lists_the_known_ones():
  with pytest.raises(ValueError, match="known: ade20k, cifar10, cifar100, imagenet, listops_generated"):
    sources.load_split(data_config(name="mnist"), "train")


def source_of(n):
  return core.ArraySource(inputs=np.arange(n)[:, None], weight=np.ones(n, np.float32))


def test_processes_read_disjoint_parts_of_the_same_global_batches():
  source = source_of(24)
  single = pipeline.train_batches(source, global_batch=8, seed=1)
  halves = [pipeline.train_batches(source, global_batch=8, seed=1, process_index=p, process_count=2)
            for p in range(2)]
  seen = []
  for _ in range(6):  # two epochs
    whole = next(single)["inputs"][:, 0]
    np.testing.assert_array_equal(np.concatenate([next(h)["inputs"][:, 0] for h in halves]), whole)
    seen.extend(whole.tolist())
  assert sorted(seen[:24]) == list(range(24)) and sorted(seen[24:]) == list(range(24))
  assert seen[:24] != seen[24:]  # reshuffled each epoch


def test_train_iterator_state_resumes_exactly():
  batches = pipeline.train_batches(source_of(10), global_batch=4, seed=0)
  next(batches)
  state = batches.get_state()
  expected = [next(batches)["inputs"].tolist() for _ in range(3)]
  resumed = pipeline.train_batches(source_of(10), global_batch=4, seed=0)
  resumed.set_state(state)
  assert [next(resumed)["inputs"].tolist() for _ in range(3)] == expected


def test_input_workers_give_the_same_batches_and_resume_across_worker_counts():
  make = lambda workers: pipeline.train_batches(source_of(10), global_batch=4, seed=0, workers=workers,
                                                transform=lambda example, rng: example | {"noise": rng.random()})
  threads, processes = make(0), make(2)
  first = [next(threads) for _ in range(4)]
  for batch in first[:2]:
    np.testing.assert_array_equal(next(processes)["noise"], batch["noise"])
  state = processes.get_state()
  assert state == {"next_index": 2}  # grain's own format: checkpoints of earlier runs resume
  for workers in (0, 1):
    resumed = make(workers)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["noise"], first[2]["noise"])
  assert pipeline.default_workers(2) == 0 and pipeline.default_workers(16) == 4 and pipeline.default_workers(512) == 32


def test_eval_batches_cover_the_split_once_with_zero_weight_padding():
  batches = list(pipeline.eval_batches(source_of(10), global_batch=4))
  assert len(batches) == 3
  inputs = np.concatenate([b["inputs"][:, 0] for b in batches])
  weights = np.concatenate([b["weight"] for b in batches])
  assert inputs[weights == 1].tolist() == list(range(10)) and weights[10:].tolist() == [0, 0]


def test_pathfinder_release_split_as_lra_splits_it(tmp_path):
  written = write_pathfinder(tmp_path / "pf", count=20, empty=(3, 17))
  config = data_config(name="lra_pathfinder", directory=str(tmp_path / "pf"), tfds_dir="", difficulty="hard")
  splits = {s: sources.load_split(config, s) for s in core.SPLITS}
  # LRA: hard[:80%], hard[80%:90%], hard[90%:] in metadata order (0.npy, 2.npy, 10.npy), then empty dropped
  for split, (low, high) in {"train": (0, 16), "validation": (16, 18), "test": (18, 20)}.items():
    kept = [(image, label) for image, label in written[low:high] if image is not None]
    assert len(splits[split]) == len(kept)
    for i, (image, label) in enumerate(kept):
      assert splits[split][i]["inputs"].tolist() == (image.ravel().astype(np.int32) + 1).tolist()
      assert splits[split][i]["label"] == label
  assert [len(splits[s]) for s in core.SPLITS] == [15, 1, 2]
  metadata = tmp_path / "pf" / "curv_contour_length_14" / "metadata" / "10.npy"
  metadata.write_text(metadata.read_text() + "imgs/10 sample_0.png 20\n")
  with pytest.raises(ValueError, match=r"10.npy:8: expected"):
    sources.load_split(config, "train")
  metadata.write_text(metadata.read_text().splitlines()[0] + "\nimgs/10 missing.png 1 1 1.0 6 2 2 0.5 1 1\n")
  with pytest.raises(FileNotFoundError, match=r"10.npy:2: image .*missing.png not found"):
    sources.load_split(config, "train")
  with pytest.raises(ValueError, match="difficulty='intermediate' is not one of: easy, medium, hard"):
    sources.load_split(data_config(**(config.to_dict() | dict(difficulty="intermediate"))), "train")
  with pytest.raises(FileNotFoundError, match="curv_baseline/curv_contour_length_9/curv_contour_length_14"):
    sources.load_split(data_config(name="lra_pathfinder", directory=str(tmp_path), tfds_dir="", difficulty="hard"),
                       "train")


def test_image_folders(tmp_path):
  from PIL import Image
  write_image_folders(tmp_path / "imagenet", per_class=3)
  images = data_config(name="imagenet", directory=str(tmp_path / "imagenet"), image_size=24,
                       crop_fraction=0.875)
  val = sources.load_split(images, "validation")
  assert len(val) == 6 and val.info.num_classes == 2
  from bilateral_jax.data import augment
  eval_transform = augment.image_transform(data_config(random_resized_crop=False, hflip=False, rand_augment_ops=0,
                                                       random_erasing=0.0), size=24, crop_fraction=0.875, train=False)
  example = eval_transform(val[5], None)
  assert example["inputs"].shape == (24, 24, 3) and example["label"] == 1
  # centre crop of the resized image, uint8 (normalised on the device)
  path, _ = val.examples[5]
  with Image.open(path) as image:
    scale = 24 / 0.875 / min(image.size)
    resized = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
  left, top = (resized.width - 24) // 2, (resized.height - 24) // 2
  assert example["inputs"].dtype == np.uint8
  np.testing.assert_array_equal(example["inputs"], np.asarray(resized)[top:top + 24, left:left + 24])
  with pytest.raises(FileNotFoundError, match="one folder per class"):
    sources.load_split(data_config(name="imagenet", directory=str(tmp_path), image_size=24,
                                   crop_fraction=0.875), "train")


def test_generated_listops_is_a_tfds_dataset_built_once(tmp_path):
  config = data_config(name="listops_generated", seed=5, directory="", tfds_dir=str(tmp_path), max_depth=4,
                       max_args=4, min_length=5, max_length=40, operator_probability=0.5, train_size=30,
                       validation_size=6, test_size=6, overlength="error")
  spec = listops.ListOpsSpec(max_depth=4, max_args=4, min_length=5, max_length=40, operator_probability=0.5)
  test = sources.load_split(config, "test")
  expected = listops.generate(42, spec, seed=5)[36:]  # one draw, cut train | validation | test
  assert len(test) == 6
  for i, (tokens, label) in enumerate(expected):
    np.testing.assert_array_equal(test[i]["inputs"], core.fit_length(listops.encode(tokens), 40, "error", ""))
    assert test[i]["label"] == label == listops.evaluate(tokens)
  built = list(tmp_path.glob("list_ops/generated_*/2.0.0/*.array_record*"))
  assert len(built) == 3
  stamps = {p: p.stat().st_mtime_ns for p in built}
  train = sources.load_split(config, "train")
  assert len(train) == 30
  assert {p: p.stat().st_mtime_ns for p in built} == stamps  # read back, not rebuilt
  splits = [{train[i]["inputs"].tobytes() for i in range(30)}, {test[i]["inputs"].tobytes() for i in range(6)}]
  assert not splits[0] & splits[1]


def test_pathfinder_generator_labels_markers_and_tfds_build(tmp_path):
  from bilateral_jax.data import pathfinder
  spec = pathfinder.PathfinderSpec(side=32, contour_length=9, distractors=1)
  examples = pathfinder.generate(40, spec, seed=3)
  assert [e.label for e in examples] == [e.label for e in pathfinder.generate(40, spec, seed=3)]
  assert sum(e.label for e in examples) == 20
  for example in examples:
    first, second = example.contours[0], example.contours[1]
    assert np.allclose(example.markers[0], first[0])
    assert np.allclose(example.markers[1], first[-1] if example.label else second[-1])
    assert len(example.contours) == 3 and all(len(c) == 10 for c in example.contours)
    assert np.all((np.concatenate(example.contours) >= 0) & (np.concatenate(example.contours) <= 31))
    for marker in example.markers:
      assert example.image[tuple(np.rint(marker).astype(int))] == 255
  config = data_config(name="pathfinder_generated", side=32, contour_length=9, distractors=1, train_size=8,
                       validation_size=4, test_size=40, seed=1, tfds_dir=str(tmp_path))
  test = sources.load_split(config, "test")  # the test split is seeded seed + 2 = 3, as above
  assert len(test) == 40 and test.info.model_sizes() == {"vocab_size": 257, "num_classes": 2}
  for i in (0, 7, 39):
    np.testing.assert_array_equal(test[i]["inputs"], examples[i].image.ravel().astype(np.int32) + 1)
    assert test[i]["label"] == examples[i].label


def test_text_corpus_chars_and_bytes(tmp_path):
  write_text_corpus(tmp_path / "plays")
  texts = [p.read_text() for p in sorted((tmp_path / "plays").glob("**/*.md"))]
  for tokenizer in ("chars", "bytes"):
    config = data_config(name="text_corpus", directory=str(tmp_path / "plays"), glob="**/*.md",
                         tokenizer=tokenizer, tfds_dir=str(tmp_path / "tfds"), max_length=8)
    train, test = sources.load_split(config, "train"), sources.load_split(config, "test")
    stream = np.concatenate([train.arrays["inputs"].ravel(), train.arrays["targets"][-1, -1:]])
    expected = "".join(t[: int(0.9 * len(t))] for t in texts)
    if tokenizer == "bytes":
      assert train.info.vocab_size == 257
      assert bytes(int(i) - 1 for i in stream).decode() == expected[: len(stream)]
    else:
      assert train.info.vocab_size == 2 + len(set(expected))
      assert len(test) == (len("".join(t[int(0.95 * len(t)):] for t in texts)) - 1) // 8
  with pytest.raises(FileNotFoundError, match="no files match"):
    sources.load_split(data_config(name="text_corpus", directory=str(tmp_path), glob="*.txt", tokenizer="chars",
                                   tfds_dir="", max_length=8), "train")


def test_catalog_datasets_through_tfds_data_sources(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    text = data_config(name="lra_text", directory="", tfds_dir="", seed=0, max_length=64, validation_size=3,
                       validation_from="train", overlength="truncate")
    sizes = {split: len(sources.load_split(text, split)) for split in core.SPLITS}
    assert sizes == {"train": 9, "validation": 3, "test": 12}
    first = sources.load_split(text, "test")[0]
    assert first["inputs"].shape == (64,) and first["inputs"].max() <= 256 and first["label"] in (0, 1)
    images = data_config(name="cifar10", directory="", tfds_dir="", seed=0, validation_size=2)
    train = sources.load_split(images, "train")
    assert len(train) == 10 and train[0]["inputs"].shape == (32, 32, 3) and train[0]["inputs"].dtype == np.uint8
    gray = [sources.load_split(data_config(name="lra_image", directory="", tfds_dir=""), s) for s in core.SPLITS]
    assert all(split[0]["inputs"].shape == (1024,) for split in gray)  # mock_data ignores train[:90%] slices
    imagenet = sources.load_split(data_config(name="imagenet", directory="", tfds_dir="", image_size=16,
                                              crop_fraction=0.875), "validation")
    assert len(imagenet) == 12 and imagenet.info.num_classes == 1000
    assert imagenet[0]["inputs"].ndim == 3 and imagenet[0]["inputs"].dtype == np.uint8
  with pytest.raises(FileNotFoundError, match="tfds build imdb_reviews --file_format=array_record"):
    sources.load_split(data_config(name="lra_text", directory="", tfds_dir=str(tmp_path), seed=0, max_length=64,
                                   validation_size=3, validation_from="train", overlength="truncate"), "train")


def test_cifar100_python_files(tmp_path):
  write_cifar100(tmp_path, per_file=10)
  config = data_config(name="cifar100", directory=str(tmp_path), tfds_dir="", seed=0, validation_size=4)
  train, test = sources.load_split(config, "train"), sources.load_split(config, "test")
  assert (len(train), len(test)) == (6, 10) and train.info.num_classes == 100
  np.testing.assert_allclose(train.info.image_stats[0], [0.5071, 0.4865, 0.4409])
  with (tmp_path / "test").open("rb") as handle:
    raw = pickle.load(handle, encoding="bytes")
  assert test.arrays["label"].tolist() == list(raw[b"fine_labels"])
  assert test[3]["inputs"][5, 7].tolist() == [raw[b"data"][3, c * 1024 + 5 * 32 + 7] for c in range(3)]


def test_ade20k_release_layout_and_its_crops(tmp_path):
  written = write_ade20k(tmp_path)
  config = data_config(name="ade20k", directory=str(tmp_path), tfds_dir="", image_size=16, scale_range=(0.5, 2.0))
  train, validation = sources.load_split(config, "train"), sources.load_split(config, "validation")
  assert (len(train), len(validation), len(sources.load_split(config, "test"))) == (3, 3, 3)
  assert train.info.num_classes == 150
  for i, annotation in enumerate(written["validation"]):  # PNG annotations round-trip exactly
    np.testing.assert_array_equal(validation[i]["label"], annotation)
    assert validation[i]["inputs"].shape == annotation.shape + (3,)
  evaluate = augment.segmentation_transform(size=16, scale_range=(0.5, 2.0), train=False)
  example = evaluate(validation[0], None)  # 24 x 40 -> 16 x 27 -> centre 16 x 16
  assert example["inputs"].shape == (16, 16, 3) and example["label"].shape == (16, 16)
  assert example["label"].min() >= -1 and example["label"].max() <= 149
  shrink = augment.segmentation_transform(size=16, scale_range=(0.25, 0.25), train=True)
  small = shrink(train[0], np.random.default_rng(0))  # 24 x 40 -> 4 x 7, padded with uncounted pixels
  assert small["label"].shape == (16, 16) and np.sum(small["label"] >= 0) <= 4 * 7
  assert small["inputs"].dtype == np.uint8 and not small["inputs"][4:, 7:].any()  # black padding
  (tmp_path / "annotations" / "training" / "ADE_train_00000001.png").unlink()
  with pytest.raises(FileNotFoundError, match="ADE_train_00000001.jpg has no annotation"):
    sources.load_split(config, "train")
  with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
    sources.load_split(data_config(**{**config, "directory": str(tmp_path / "missing")}), "train")


def test_ade20k_through_tfds_scene_parse150():
  import tensorflow_datasets as tfds
  config = data_config(name="ade20k", directory="", tfds_dir="", image_size=16, scale_range=(0.5, 2.0))
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    validation = sources.load_split(config, "validation")
    example = validation[0]
  assert len(validation) == 4  # mock images and annotations have unrelated random sizes
  assert example["label"].ndim == 2 and example["label"].dtype == np.uint8 and example["inputs"].shape[-1] == 3


def test_files_matching_is_pathlibs_glob_of_files(tmp_path):
  from etils import epath
  from bilateral_jax.data import builders
  for name in ("a.md", "b.txt", "x/c.md", "x/y/d.md", "x/y/e1.md", "z/f.md"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(name)
  for pattern in ("**/*.md", "*.md", "x/*.md", "x/**/*.md", "**/e?.md", "**/*", "*/*/*"):
    expected = sorted(str(p) for p in tmp_path.glob(pattern) if p.is_file())
    assert [str(p) for p in builders.files_matching(epath.Path(tmp_path), pattern)] == expected, pattern


def test_a_split_is_loaded_once_per_process_for_each_data_config():
  digits = data_config(name="sklearn_digits", seed=0, test_size=360, validation_size=180)
  test = sources.shared_split(digits, "test")
  assert sources.shared_split(ml_collections.ConfigDict(digits.to_dict()), "test") is test
  assert sources.shared_split(digits, "train") is not test
  other = sources.shared_split(data_config(name="sklearn_digits", seed=1, test_size=360, validation_size=180), "test")
  assert other is not test and not np.array_equal(other.arrays["label"], test.arrays["label"])
