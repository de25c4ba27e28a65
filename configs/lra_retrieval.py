"""LRA Retrieval: byte-level AAN citation pairs (2 x 4,000 bytes, two towers) with BSA + GRC.

    python train.py --config configs/lra_retrieval.py --config.data.directory=/path/to/lra_release/tsv_data
    python train.py --config configs/lra_retrieval.py:small --config.data.directory=/path/to/lra_release/tsv_data

Data as LRA's input pipeline (lra_benchmarks/matching/input_pipeline.py): `new_aan_pairs.{train,eval,test}
.tsv` (lines `label\tid1\tid2\ttext1\ttext2`), each document's bytes as ids byte + 1, cut to 4,000 per
document; validation is the eval file.

Base: LRA's transformer_base (base_match_config.py): one encoder shared by both documents, 4 layers,
width 128, 4 heads, MLP 512, CLS pooling, and LRA's dual head (`classifier_head_dual` with no
interaction): [u, v] -> ReLU 512 -> ReLU 256 -> logits; dropout 0.1, batch 32, 5k steps, weight decay
0.1, no clipping, rsqrt decay with constant 0.05 and 8k warm-up steps, so that the rate is still rising
when training ends (at 0.05 * 5000/8000 / sqrt(8000) = 3.49e-4), as in LRA. Other differences as in
lra_listops.py. `:small`: the setting of this paper's line of work (`common.lra_small`), whose head sees
[u, v, u * v, u - v].

Expected: LRA's Transformer baseline reached 57.5% test accuracy; the paper reports BSA above it. Not yet
measured here.
"""
import ml_collections

from configs import common


def get_config(variant: str = ""):
  config = common.base()
  common.lra_classifier(config, vocab_size=257, num_classes=2, max_length=4000, pooling="cls",
                        head_hidden=(512, 256), two_tower=True, interaction="concat", model_dim=128, mlp_dim=512)
  config.data = ml_collections.ConfigDict(dict(name="lra_retrieval", directory="", tfds_dir="", max_length=4000,
                                               overlength="truncate"))
  config.train.num_steps = 5_000
  config.train.eval_every = 1_000
  config.train.checkpoint_every = 1_000
  config.optimizer.update(dict(learning_rate=0.05 / 8_000**0.5, warmup_steps=8_000, schedule="rsqrt",
                               weight_decay=0.1, clip_norm=0.0))
  config.eval.batch_size = 32
  if common.variant(variant, ("", "small")) == "small":
    common.lra_small(config, max_length=4000, batch_size=32, num_steps=30_000, warmup_steps=800)
  return config
