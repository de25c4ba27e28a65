"""The Shakespeare position study (studies/shakespeare_positions.py) past one epoch, for its two best
schemes at 600 steps, RoPE (the strongest baseline, here the study's baseline) and BSA's causal Laplacian,
and ALiBi (BSA's Laplacian with fixed bandwidths), every variant with the standard residual; learned
absolute positions (the position study's baseline) with `--variant "learned absolute"`.

    python study.py --config configs/shakespeare_char_lm.py:small --variants studies/shakespeare_positions_epoch.py \
        --seeds 0,1,2,3,4 --workdir runs/study_shakespeare_positions_epoch --config.train.num_steps=2400 \
        --config.train.eval_every=600 --config.train.checkpoint_every=1200

2,400 steps of 32 windows of 64 characters: 1.03 epochs of the 74,794 training windows. Does BSA's lead
at a quarter of an epoch (studies/shakespeare_positions.py) last, or was it learning speed?
Results: docs/results.md, "Shakespeare past one epoch".
"""

PRIMARY = "perplexity"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Pinned as in studies/shakespeare_positions.py, so that the study does not move when the shipped config does.
STANDARD_RESIDUAL = {"residual": "standard"}

VARIANTS = {
    "RoPE": STANDARD_RESIDUAL | {"attention": "rope", "position_table": "none"},
    "BSA laplacian": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "laplacian"},
    "ALiBi": STANDARD_RESIDUAL | {"attention": "alibi", "position_table": "none"},
    "learned absolute": STANDARD_RESIDUAL | {"attention": "standard", "position_table": "learned"},
}
