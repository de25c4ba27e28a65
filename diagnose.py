"""The paper's diagnostics, written to DIR/diagnostics/ as JSON and PNG.

    python diagnose.py --lipschitz --workdir DIR [--lengths 100,1000,10000] [--samples 1000]
    python diagnose.py --workdir DIR [--step N | --best] [--examples 64] [--noise 0.1]

--lipschitz is model-free (the softmax study of the paper's Figure 2: `lipschitz.json` with keys N,
lipschitz, fit_a, fit_b, perturbation). With a trained run it measures, on the first eval split, SNR and
token uniformity per layer (`depth.json`, `depth.png`): noise with `--noise` times the RMS of the stack's
input U (the embeddings) is added to U, and SNR_l = 20 log10(||Y_l(U)|| / ||Y_l(U + eta) - Y_l(U)||).
"""
import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from bilateral_jax import cli, diagnostics, trainer

flags.DEFINE_bool("lipschitz", False, "Run the model-free softmax Lipschitz study (needs no checkpoint).")
flags.DEFINE_list("lengths", ["100", "200", "500", "1000", "2000", "5000", "10000"], "N for --lipschitz.")
flags.DEFINE_integer("samples", 1000, "Random points per N for --lipschitz.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest that restores).")
flags.DEFINE_bool("best", False, "Use the best checkpoint.")
flags.DEFINE_integer("examples", 64, "Examples of the first eval split to measure on.")
flags.DEFINE_float("noise", 0.1, "Noise standard deviation, relative to the RMS of the stack's input.")
flags.adopt_module_key_flags(cli)


def lipschitz(out: pathlib.Path) -> None:
  lengths = [int(n) for n in cli.FLAGS.lengths]
  if min(lengths) < 2 or cli.FLAGS.samples < 1:
    raise ValueError("--lengths must all be >= 2 and --samples >= 1")
  result = diagnostics.lipschitz_study(lengths, samples=cli.FLAGS.samples)
  (out / "lipschitz.json").write_text(json.dumps(result, indent=2))
  from bilateral_jax.plots import plt  # noqa: PLC0415 - matplotlib (Agg) only when drawing
  n = np.asarray(result["N"], np.float64)
  figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  left.loglog(n, result["lipschitz"], "o", label="mean spectral norm of J")
  left.loglog(n, result["fit_a"] / np.sqrt(n) + result["fit_b"], "-",
              label=f"{result['fit_a']:.3g}/sqrt(N) + {result['fit_b']:.3g}")
  right.loglog(n, result["perturbation"], "o-")
  left.set(xlabel="N", title="softmax Lipschitz constant at z ~ N(0, I)")
  right.set(xlabel="N", title="E||softmax(c + eta) - softmax(c)||")
  left.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out / "lipschitz.png", dpi=100)
  for n_, value, change in zip(result["N"], result["lipschitz"], result["perturbation"]):
    print(f"N {n_:>6}  Lipschitz {value:.5f}  perturbation {change:.5f}")
  print(f"fit: {result['fit_a']:.4f} / sqrt(N) + {result['fit_b']:.5f}")


def depth(workdir: str, out: pathlib.Path) -> None:
  config = cli.run_config(workdir)
  experiment = trainer.Experiment(config, info_split=config.eval.splits[0])
  checkpointer = experiment.checkpointer(workdir, read_only=True)
  try:
    step, params, *_ = checkpointer.restore(experiment.abstract_state.params, step=cli.FLAGS.step,
                                            best=cli.FLAGS.best)
  finally:
    checkpointer.close()
  out.mkdir(exist_ok=True)
  params = jax.device_get(params)
  source = experiment.info_source
  transform = experiment.eval_transform or (lambda example, rng: example)
  rows = [transform(source[i], None) for i in range(min(cli.FLAGS.examples, len(source)))]
  inputs = np.stack([row["inputs"] for row in rows])
  model = experiment.model
  stack_input = diagnostics.stack_input(model, params, inputs)
  rms = float(np.sqrt(np.mean(np.square(np.asarray(stack_input, np.float64)))))
  noise = cli.FLAGS.noise * rms * jax.random.normal(jax.random.key(config.seed), stack_input.shape)
  clean = diagnostics.hidden_states(model, params, inputs)
  noisy = diagnostics.hidden_states(model, params, inputs, noise)
  mask = None
  if np.issubdtype(inputs.dtype, np.integer) and inputs.ndim == 2:  # token ids: 0 is padding
    mask = inputs != 0
    if clean[0].shape[1] == inputs.shape[1] + 1:  # a CLS token in front
      mask = np.concatenate([np.ones((len(inputs), 1), bool), mask], axis=1)
    if clean[0].shape[1] != mask.shape[1]:
      mask = None
  result = {"step": step, "split": config.eval.splits[0], "examples": len(rows), "noise": cli.FLAGS.noise,
            "layer": list(range(len(clean))),
            "snr_db": [float(diagnostics.snr_db(c, n)) for c, n in zip(clean, noisy)],
            "token_uniformity": [float(np.mean(diagnostics.token_uniformity(c, mask))) for c in clean]}
  (out / "depth.json").write_text(json.dumps(result, indent=2))
  from bilateral_jax.plots import plt  # noqa: PLC0415 - matplotlib (Agg) only when drawing
  figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  left.plot(result["layer"], result["snr_db"], "o-")
  right.plot(result["layer"], result["token_uniformity"], "o-")
  left.set(xlabel="layer (0 = embeddings)", ylabel="dB", title=f"SNR (noise {cli.FLAGS.noise} x RMS)")
  right.set(xlabel="layer (0 = embeddings)", title="token uniformity (mean pairwise cosine)")
  figure.tight_layout()
  figure.savefig(out / "depth.png", dpi=100)
  print("layer " + " ".join(f"{layer:>7}" for layer in result["layer"]))
  print("SNR dB " + " ".join(f"{value:7.2f}" for value in result["snr_db"]))
  print("unif.  " + " ".join(f"{value:7.4f}" for value in result["token_uniformity"]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = cli.set_up()
  out = pathlib.Path(workdir) / "diagnostics"
  if cli.FLAGS.lipschitz:
    out.mkdir(parents=True, exist_ok=True)
    lipschitz(out)
  else:
    depth(workdir, out)
  print(f"written to {out}")


if __name__ == "__main__":
  cli.run(main)
