"""The paper's diagnostics, written to DIR/diagnostics/ as JSON, PNG (and NPZ).

    python diagnose.py --lipschitz --workdir DIR [--lengths 100,1000,10000] [--samples 1000]
    python diagnose.py --long_range --workdir DIR [--lengths 64,128,256,512,1024] [--examples 64]
    python diagnose.py --workdir DIR [--step N | --best] [--examples 64] [--noise 0.1]

--lipschitz is model-free: the softmax study of the paper's Figure 2 (`lipschitz.json` with keys N,
lipschitz, fit_a, fit_b, perturbation). --long_range: the relative change of the last block's attention
output under a perturbation of relative size 1e-3 of its stack's input Y_0, divided by that size, against
N (`long_range.json`, `long_range.png`). In a DIR without a trained run, model-free: random 2-layer stacks
with standard attention (+ sinusoidal positions), ALiBi and BSA on N(0, I) inputs (keys N and one list per
attention kind). With a trained language model in DIR: that model (--step, --best) on the first --examples
windows of N tokens of its first eval split (eval.py --eval_length; keys step, split, examples,
trained_length, N, sensitivity).

With a trained run it measures on the first `--examples` of the first eval split:
- `depth.json`, `depth.png`: SNR and token uniformity per layer (0 = Y_0, the stack's input after any
  additive position table). Noise with `--noise` times the RMS of Y_0 is added to Y_0, and
  SNR_l = 20 log10(||Y_l - mean|| / ||Y_l(Y_0 + eta) - Y_l(Y_0)||), Y_l centred over tokens; both
  measures count real tokens only (no padding, no CLS or class tokens).
- `attention.npz` (maps [layers, n, n]: the attention averaged over heads and examples; coords [n, c]),
  `attention.json` (layer, mean_distance: per layer the mean over real query rows of
  sum_j A_ij ||r_i - r_j||, in distance_unit, tokens or patches), `attention.png` (images: the last layer's
  CLS row, or the mean over queries without a CLS token, of the first example over that image;
  sequences: the last layer's map).
- The Segmenter's mask-transformer decoder is a second stack, reported apart: `decoder` in depth.json and
  attention.json (its layer 0 is its own input), `decoder_maps` and `decoder_coords` in attention.npz.
- `cross_terms.json`: cross_share (with content_share, position_share, note) of the first layer's logits,
  0.0 by construction without additive positions (docs/method.md section 4).
"""
import json
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import app, flags
from etils import epath

from bilateral_jax import cli, diagnostics, experiments, runs, storage, tasks, trainer
from bilateral_jax.data import sources

flags.DEFINE_bool("lipschitz", False, "Run the model-free softmax Lipschitz study (needs no checkpoint).")
flags.DEFINE_bool("long_range", False, "Run the long-range stability study: of the trained language model in "
                  "--workdir, model-free where it holds no run.")
flags.DEFINE_list("lengths", None, "N for --lipschitz (default 100 .. 10000) or --long_range (64 .. 1024).")
flags.DEFINE_integer("samples", 1000, "Random points per N for --lipschitz.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest that restores).")
flags.DEFINE_bool("best", False, "Use the best checkpoint.")
flags.DEFINE_integer("examples", 64, "Examples of the first eval split to measure on.")
flags.DEFINE_float("noise", 0.1, "Noise standard deviation, relative to the RMS of the stack's input.")
flags.adopt_module_key_flags(cli)


def lengths(default) -> list[int]:
  chosen = [int(n) for n in cli.FLAGS.lengths or default]
  if min(chosen) < 2:
    raise ValueError("--lengths must all be >= 2")
  return chosen


def lipschitz(out: epath.Path) -> None:
  if cli.FLAGS.samples < 1:
    raise ValueError("--samples must be >= 1")
  result = diagnostics.lipschitz_study(lengths((100, 200, 500, 1000, 2000, 5000, 10000)), samples=cli.FLAGS.samples)
  (out / "lipschitz.json").write_text(json.dumps(result, indent=2))
  from bilateral_jax.plots import plt, save  # noqa: PLC0415 - matplotlib (Agg) only when drawing
  n = np.asarray(result["N"], np.float64)
  figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  left.loglog(n, result["lipschitz"], "o", label="mean spectral norm of J")
  left.loglog(n, result["fit_a"] / np.sqrt(n) + result["fit_b"], "-",
              label=f"{result['fit_a']:.3g}/sqrt(N) + {result['fit_b']:.3g}")
  right.loglog(n, result["perturbation"], "o-")
  left.set(xlabel="N", title="softmax Lipschitz constant at z ~ N(0, I)")
  right.set(xlabel="N", title="E||softmax(c + eta) - softmax(c)||")
  left.legend(fontsize=8)
  save(figure, out / "lipschitz.png")
  for n_, value, change in zip(result["N"], result["lipschitz"], result["perturbation"]):
    print(f"N {n_:>6}  Lipschitz {value:.5f}  perturbation {change:.5f}")
  print(f"fit: {result['fit_a']:.4f} / sqrt(N) + {result['fit_b']:.5f}")


def long_range(out: epath.Path, workdir: str) -> None:
  if runs.load_config(workdir) is not None:
    return trained_long_range(workdir, out)
  result = diagnostics.long_range_stability(lengths=lengths((64, 128, 256, 512, 1024)))
  (out / "long_range.json").write_text(json.dumps(result, indent=2))
  kinds = [kind for kind in result if kind != "N"]
  plot_long_range(result["N"], {kind + (" (+ sinusoidal)" if kind == "standard" else ""): result[kind] for kind in kinds},
                  "attention output under a 1e-3 perturbation (random init)", out)
  print("N         " + " ".join(f"{n:>7}" for n in result["N"]))
  for kind in kinds:
    print(f"{kind:<10}" + " ".join(f"{value:7.4f}" for value in result[kind]))


def trained_long_range(workdir: str, out: epath.Path) -> None:
  """A trained language model's long-range stability on its first eval split in windows of each --lengths."""
  config, chosen = cli.run_config(workdir), lengths((64, 128, 256, 512, 1024))
  if "perplexity" not in tasks.get(config.model.name).metrics:
    raise ValueError(f"--long_range: the run in {workdir} is a {config.model.name!r} model, not a language model; "
                     "a trained model is measured on its text in windows of each length (a --workdir without a "
                     "run gives the model-free study)")
  longest = experiments.at_eval_length(config, max(chosen))
  data = sources.describe_eval(longest)
  _, step, params = trainer.restore_params(longest, workdir, data, step=cli.FLAGS.step, best=cli.FLAGS.best,
                                           tolerated=experiments.LENGTHS)
  sensitivity = diagnostics.sensitivity_at_lengths(config, jax.device_get(params), chosen,
                                                   examples=cli.FLAGS.examples, seed=config.seed)
  result = {"step": step, "split": config.eval.splits[0], "examples": cli.FLAGS.examples,
            "trained_length": config.data.max_length, "N": chosen, "sensitivity": sensitivity}
  (out / "long_range.json").write_text(json.dumps(result, indent=2))
  plot_long_range(chosen, {config.model.transformer.attention: sensitivity},
                  f"attention output under a 1e-3 perturbation (step {step})", out)
  print("N           " + " ".join(f"{n:>7}" for n in chosen))
  print("sensitivity " + " ".join(f"{value:7.4f}" for value in sensitivity))


def plot_long_range(n: list[int], curves: dict[str, list[float]], title: str, out: epath.Path) -> None:
  from bilateral_jax.plots import plt, save  # noqa: PLC0415 - matplotlib (Agg) only when drawing
  figure, axes = plt.subplots(figsize=(5, 3.6))
  for label, values in curves.items():
    axes.semilogx(n, values, "o-", label=label)
  axes.set(xlabel="N", ylabel="relative output change / relative input change")
  axes.set_title(title, fontsize=9)
  axes.legend(fontsize=8)
  save(figure, out / "long_range.png")


class Restored(NamedTuple):
  config: Any
  meta: dict  # step, split, examples: the head of every JSON
  model: Any
  params: Any
  inputs: np.ndarray


def restore(workdir: str) -> Restored:
  """The run's checkpoint (--step, --best) and the first --examples of its first eval split."""
  config = cli.run_config(workdir)
  data = sources.describe_eval(config)
  experiment, step, params = trainer.restore_params(config, workdir, data, step=cli.FLAGS.step, best=cli.FLAGS.best)
  inputs = diagnostics.eval_inputs(experiment, cli.FLAGS.examples)
  meta = {"step": step, "split": config.eval.splits[0], "examples": len(inputs)}
  return Restored(config, meta, experiment.model, jax.device_get(params), inputs)


def depth(run: Restored, out: epath.Path) -> None:
  result = run.meta | diagnostics.depth_profile(run.model, run.params, run.inputs, noise=cli.FLAGS.noise,
                                                seed=run.config.seed)
  (out / "depth.json").write_text(json.dumps(result, indent=2))
  profiles = {"": result} | ({"decoder": result["decoder"]} if "decoder" in result else {})
  from bilateral_jax.plots import plt, save  # noqa: PLC0415 - matplotlib (Agg) only when drawing
  figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  for name, profile in profiles.items():
    left.plot(profile["layer"], profile["snr_db"], "o-", label=name or "encoder")
    right.plot(profile["layer"], profile["token_uniformity"], "o-", label=name or "encoder")
  left.set(xlabel="layer (0 = Y_0)", ylabel="dB", title=f"SNR (noise {cli.FLAGS.noise} x RMS)")
  right.set(xlabel="layer (0 = Y_0)", title="token uniformity (mean pairwise cosine, standardised tokens)")
  if len(profiles) > 1:
    left.legend(fontsize=8)
  save(figure, out / "depth.png")
  for name, profile in profiles.items():
    print((f"{name}: " if name else "") + "layer " + " ".join(f"{layer:>7}" for layer in profile["layer"]))
    print("SNR dB " + " ".join(f"{value:7.2f}" for value in profile["snr_db"]))
    print("unif.  " + " ".join(f"{value:7.4f}" for value in profile["token_uniformity"]))


def attention(run: Restored, out: epath.Path) -> None:
  model, params, inputs = run.model, run.params, run.inputs
  stacks = diagnostics.stacks(model, params, inputs)
  arrays, result = {}, dict(run.meta)
  for index, stack in enumerate(stacks):
    prefix = "" if index == 0 else stack.name.split("/")[0] + "_"
    maps = np.stack(diagnostics.attention_maps(stack))
    arrays |= {f"{prefix}maps": maps, f"{prefix}coords": np.asarray(stack.coords)}
    distance = [diagnostics.mean_attention_distance(weights, stack.coords, stack.real[:, None, :])
                for weights in stack.attention]
    summary = {"stack": stack.name, "layer": list(range(1, len(maps) + 1)), "length": maps.shape[-1],
               "mean_distance": [round(float(d), 4) for d in distance]}
    if index == 0:
      result |= summary | {"distance_unit": "tokens" if stack.coords.shape[-1] == 1 else "patches",
                           "maps": "attention.npz"}
    else:
      result[prefix[:-1]] = summary
  with (out / "attention.npz").open("wb") as file:
    np.savez_compressed(file, **arrays)
  maps, coords = arrays["maps"], arrays["coords"]
  (out / "attention.json").write_text(json.dumps(result, indent=2))
  from bilateral_jax.plots import plt, save  # noqa: PLC0415 - matplotlib (Agg) only when drawing
  figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  if inputs.ndim == 4 and np.issubdtype(inputs.dtype, np.floating) and hasattr(model, "patch_size"):
    image = inputs[0].astype(np.float64)
    image = (image - image.min()) / max(image.max() - image.min(), 1e-12)
    height, width = image.shape[:2]
    grid = diagnostics.attention_grid(diagnostics.attention_maps(diagnostics.stacks(model, params, inputs[:1])[0])[-1],
                                      coords)
    left.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
    shown = left.imshow(grid, extent=(0, width, height, 0), alpha=0.5, cmap="inferno", interpolation="bilinear")
    left.set(xticks=[], yticks=[])
    left.set_title("last layer's attention to the patches (example 0)", fontsize=9)
  else:
    shown = left.imshow(maps[-1], cmap="viridis")
    left.set(xlabel="key", ylabel="query")
    left.set_title("last layer's attention (mean over heads, examples)", fontsize=9)
  figure.colorbar(shown, ax=left)
  right.plot(result["layer"], result["mean_distance"], "o-", label="encoder")
  if "decoder" in result:
    right.plot(result["decoder"]["layer"], result["decoder"]["mean_distance"], "s-", label="decoder")
    right.legend(fontsize=8)
  right.set(xlabel="layer", ylabel=result["distance_unit"], title="mean attention distance", xticks=result["layer"])
  save(figure, out / "attention.png")
  print("attention distance " + " ".join(f"{d:.2f}" for d in result["mean_distance"]) + f" {result['distance_unit']}"
        + ("; decoder " + " ".join(f"{d:.2f}" for d in result["decoder"]["mean_distance"]) if "decoder" in result
           else ""))


def cross_terms(run: Restored, out: epath.Path) -> None:
  result = run.meta | diagnostics.cross_term_share(run.model, run.params, run.inputs)
  (out / "cross_terms.json").write_text(json.dumps(result, indent=2))
  print(f"cross-term share {result['cross_share']} ({result['note']})")


def trained(workdir: str, out: epath.Path) -> None:
  run = restore(workdir)
  out.mkdir(parents=True, exist_ok=True)
  for measure in (depth, attention, cross_terms):
    measure(run, out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = cli.set_up()
  out = storage.path(workdir) / "diagnostics"
  if cli.FLAGS.lipschitz or cli.FLAGS.long_range:
    out.mkdir(parents=True, exist_ok=True)
    if cli.FLAGS.lipschitz:
      lipschitz(out)
    if cli.FLAGS.long_range:
      long_range(out, workdir)
  else:
    trained(workdir, out)
  print(f"written to {out}")


if __name__ == "__main__":
  cli.run(main)
