"""Which ingredient of BSA `dot` serves the digits ViT (configs/digits_vit.py: 2 layers, a 4 x 4 patch grid
plus CLS), one change at a time, every variant with the standard residual. Primary quantity: test accuracy.

    python study.py --config configs/digits_vit.py --variants studies/digits_attribution.py \
        --seeds 0,1,2,3,4 --workdir runs/study_digits_attribution --attacks fgsm,pgd,reflect \
        --attack_convention pixel --epsilons 8,16

Each variant differs from the one it is read against in one ingredient (docs/results.md, "Attribution:
the digits ViT"):
- the temperature: learned absolute positions with standard attention (the baseline), then the same
  with a learned temperature per head (BSA's `dot` content kernel, no spatial term);
- the content kernel: then BSA's `gaussian` content kernel instead (the key-norm term);
- the position reading: TUPE (`dot` content, positions read apart from the content through per-layer
  projections of per-axis tables, a learned CLS position) against the learned temperature; BSA `dot`
  (the same with `gaussian` content) against the `gaussian` content kernel with an added table; BSA's
  isotropic Gaussian of the grid distance against the same;
- parameters: BSA `dot` carries more parameters than the baseline (the summary's counts), so the
  baseline is also run with a wider MLP that matches them;
- RoPE's base: 10,000 (the LM default, under which only 1-2 of each axis's 4 frequencies turn on a
  4-patch axis) and 4 (chosen before the run: the slowest frequency turns about one radian across the
  grid's largest offset of 3 patches).
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does.
PINNED = {"residual": "standard", "spatial_bandwidth_range": (0.5, 4.0)}

VARIANTS = {
    "learned absolute": PINNED | {"attention": "standard", "position_table": "learned"},
    "learned absolute, learned temperature": PINNED | {"attention": "bilateral", "content": "dot",
                                                       "spatial": "none", "position_table": "learned"},
    "learned absolute, gaussian content": PINNED | {"attention": "bilateral", "content": "gaussian",
                                                    "spatial": "none", "position_table": "learned"},
    "learned absolute, MLP 192": PINNED | {"attention": "standard", "position_table": "learned", "mlp_dim": 192},
    "TUPE": PINNED | {"attention": "bilateral", "content": "dot", "spatial": "dot", "position_table": "learned"},
    "BSA dot": PINNED | {"attention": "bilateral", "content": "gaussian", "spatial": "dot",
                         "position_table": "learned"},
    "BSA gaussian": PINNED | {"attention": "bilateral", "content": "gaussian", "spatial": "gaussian"},
    "RoPE": PINNED | {"attention": "rope", "position_table": "none"},
    "RoPE base 4": PINNED | {"attention": "rope", "position_table": "none", "rope_base": 4.0},
}
