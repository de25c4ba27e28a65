"""WikiText-103 word-level language model with BSA + GRC (causal), read from the release's tokens files;
`:small` and `:medium` are the two settings of Schlag, Irie & Schmidhuber (ICML 2021, "Linear Transformers
Are Secretly Fast Weight Programmers") as their code, IDSIA/lmtool-fwms, runs them.

    python train.py --config configs/wikitext103_lm.py --workdir runs/wt103 \
        --config.data.directory=/path/to/wikitext-103
    python train.py --config configs/wikitext103_lm.py:small --config.data.directory=/path/to/wikitext-103
    python train.py --config configs/wikitext103_lm.py:medium --config.data.directory=/path/to/wikitext-103
    python eval.py --workdir runs/wikitext103_lm_small --best   # validation and test, sliding window

On a pod the same command runs on every host (add --multihost); the batch is split over the devices.
`data.directory` holds wiki.{train,valid,test}.tokens (the wikitext-103 release; wikitext-2 works the
same). The metric `loss` is the per-token cross-entropy in nats, `perplexity` = exp(loss) over the scored
tokens. The default is the 16-layer, width-410, 10-head setting common in this line of work, context 256,
dense tied softmax, contiguous evaluation windows. Expected: the paper reports lower test perplexity for
BSA + GRC than for the standard Transformer; not yet measured here.

`:small` / `:medium`, as lmtool-fwms sets them (example_scripts/2021_linear_transformers_are_secretly_fwps/
{small,medium}_standard_transformer_baseline.sh, and src/train.py's defaults for what the scripts leave):
- 16 layers, width 128, 8 heads of 16, FFN 2048, context 256 (medium: width 256, 8 heads of 32, context
  384); dropout 0.1, attention dropout 0; post-LayerNorm; sinusoidal absolute positions (for the standard
  baseline); no memory (mem_len 0).
- Adaptive input and softmax (`--adaptive`): cutoffs 20,000 / 40,000 / 200,000 over ids ordered by train
  frequency (`data.vocabulary_order`), div_val 1 (one [vocab, width] table, no projections), inputs scaled
  by sqrt(width), the softmax tied to them with its own bias, the final hidden states dropped out.
- Adam lr 2.5e-4, betas (0.9, 0.999), no weight decay, gradient norm clipped at 0.25; 2,000 linear
  warm-up steps, then cosine to 0; 500,000 steps of 96 windows (medium: 400,000 steps of 56).
- Evaluation by sliding window, stride 1 (`data.eval_stride`): each token is predicted from the
  `max_length` tokens before it (in the first window, from those it has), as their eval_sliding_window.py
  scores validation and test.
Expected, standard Transformer (the one-flag baseline --config.model.transformer.attention=standard
--config.model.transformer.residual=standard): validation / test perplexity 33.0 / 34.1 (small) and
27.9 / 29.6 (medium), Table 2 of Schlag et al. 2021 (arXiv 2102.11174), quoted from the paper and not
re-checked against a stored copy here. The variants' default is BSA + GRC. Not run at scale here: no figure
of these configs has been measured.
Deliberate differences:
- No Transformer-XL machinery (their baseline uses none: mem_len 0, absolute positions); training windows
  are contiguous segments of the train stream drawn in shuffled order (theirs: 96 parallel streams in order).
- The stack: biases in the attention projections (theirs none), GELU in the FFN and no dropout inside it
  (theirs ReLU, then dropout), Flax's initialisers (theirs N(0, 0.02), LayerNorm gains N(1, 0.02)); our
  sinusoidal table, positions counting up (theirs count down).
- The cosine runs over the steps after warm-up (theirs over all steps, from warm-up's end): at most 0.36%
  (medium: 0.46%) of the peak learning rate apart.
- Frequency ties are ordered alphabetically (theirs: first seen); padding, <unk> and <eos> keep ids 0, 1, 2.
- Validation during training is the sliding-window figure every 20,000 steps (theirs: contiguous windows
  every 4,000 steps, the sliding window only at the end: train with --config.data.eval_stride=0
  --config.train.eval_every=4000, then run `eval.py --workdir DIR --best --config
  configs/wikitext103_lm.py:small --config.data.directory=...`, whose stride is 1).
- With static shapes the adaptive softmax computes every cluster for every position (chunked: memory, not
  FLOPs, is saved; `ops.adaptive`), and every position of a sliding window, scored or not.
"""
import ml_collections

from configs import common


# lmtool-fwms's two settings: (width, heads, context, batch, steps)
LMTOOL = {"small": (128, 8, 256, 96, 500_000), "medium": (256, 8, 384, 56, 400_000)}


def get_config(variant: str = ""):
  config = common.base()
  common.causal_lm(config, num_layers=16, num_heads=10, model_dim=410, mlp_dim=2100)  # train file's words
  config.data = ml_collections.ConfigDict(dict(name="wikitext", directory="", tfds_dir="", max_length=256,
                                               eval_stride=0, vocabulary_order="sorted"))
  config.train.batch_size = 96
  config.train.num_steps = 125_000
  config.train.eval_every = 5_000
  config.train.checkpoint_every = 5_000
  config.optimizer.learning_rate = 2.5e-4
  config.optimizer.warmup_steps = 4_000
  config.eval.batch_size = 96
  if common.variant(variant, ("", "small", "medium")):
    width, heads, context, batch, steps = LMTOOL[variant]
    config.model.transformer.update(dict(
        num_layers=16, num_heads=heads, model_dim=width, mlp_dim=2048, max_length=context, dropout_rate=0.1,
        norm="post", position_table="sinusoidal", spatial_bandwidth_range=(1.0, float(context))))
    config.model.adaptive_cutoffs = (20_000, 40_000, 200_000)
    config.model.adaptive_div_val = 1
    config.data.update(dict(max_length=context, eval_stride=1, vocabulary_order="frequency"))
    config.train.update(dict(batch_size=batch, num_steps=steps, eval_every=20_000, checkpoint_every=4_000))
    config.optimizer.update(dict(learning_rate=2.5e-4, warmup_steps=2_000, schedule="cosine",
                                 final_learning_rate_fraction=0.0, weight_decay=0.0, clip_norm=0.25, b1=0.9, b2=0.999))
    config.eval.batch_size = batch
  return config
