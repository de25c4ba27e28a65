"""WikiText-103 word-level language model with BSA + GRC (causal), read from the release's tokens files.

    python train.py --config configs/wikitext103_lm.py --workdir runs/wt103 \
        --config.data.directory=/path/to/wikitext-103

`data.directory` holds wiki.{train,valid,test}.tokens (the wikitext-103 release; wikitext-2 works the
same). The model is the 16-layer, width-410, 10-head setting common in this line of work, context 256.
Expected: the paper reports lower test perplexity for BSA + GRC than for the standard Transformer; not yet
measured here. The metric `loss` is the per-token cross-entropy:
perplexity = exp(loss).
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  common.causal_lm(config, num_layers=16, num_heads=10, model_dim=410, mlp_dim=2100)  # train file's words
  config.data = ml_collections.ConfigDict(dict(name="wikitext", directory="", tfds_dir="", max_length=256))
  config.train.batch_size = 96
  config.train.num_steps = 125_000
  config.train.eval_every = 5_000
  config.train.checkpoint_every = 5_000
  config.optimizer.learning_rate = 2.5e-4
  config.optimizer.warmup_steps = 4_000
  config.eval.batch_size = 96
  return config
