"""Samples a continuation of --prompt from a causal language model's checkpoint in --workdir and prints
the prompt and its continuation. The same --seed gives the same text.

    python generate.py --workdir DIR --prompt "ROMEO:" --length 200 [--temperature 0.8] [--top_k 20] [--seed 0]

The config is the one the run saved (DIR/config.json); the vocabulary is its corpus's (characters, or
words with `<eos>` as a line break). --temperature 0 takes the most probable token each time. Decoding
keeps a key-value cache of the model's context (`bilateral_jax.sampling`): beyond it, the continuation
is conditioned on the latest half context.
"""
from absl import flags

from bilateral_jax import cli, sampling, trainer
from bilateral_jax.data import sources

flags.DEFINE_string("prompt", None, "The text to continue.", required=True)
flags.DEFINE_integer("length", 200, "Tokens to generate (characters, or words).", lower_bound=0)
flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0: the most probable token.", lower_bound=0.0)
flags.DEFINE_integer("top_k", 0, "Draw from the k most probable tokens only (0: all).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the draws.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest that restores).")
flags.adopt_module_key_flags(cli)


def main(argv):
  workdir, config = cli.open_run(argv)
  flags_ = cli.FLAGS
  if config.model.name != "lm":
    raise ValueError(f"{workdir} holds a {config.model.name!r} model; generate.py samples from causal "
                     "language models ('lm')")
  data = sources.describe_eval(config)  # the vocabulary
  experiment, _, params = trainer.restore_params(config, workdir, data, step=flags_.step)
  prompt = sampling.encode(flags_.prompt, experiment.info)
  ids = sampling.generate(experiment.model, params, prompt, flags_.length, temperature=flags_.temperature,
                          top_k=flags_.top_k, seed=flags_.seed, banned=sampling.never_drawn(experiment.info))
  print(flags_.prompt + sampling.decode(ids, experiment.info))


if __name__ == "__main__":
  cli.run(main)
