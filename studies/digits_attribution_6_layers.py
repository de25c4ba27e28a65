"""The digits attribution study (studies/digits_attribution.py) at 6 layers: which ingredient of BSA `dot`
serves a deeper digits ViT, one change at a time, every variant with the standard residual. Primary
quantity: test accuracy.

    python study.py --config configs/digits_vit.py --variants studies/digits_attribution_6_layers.py \
        --seeds 0,1,2,3,4 --workdir runs/study_digits_attribution_6_layers --attacks fgsm,pgd,reflect \
        --attack_convention pixel --epsilons 8,16

The variants and what each is read against are the 2-layer study's; the parameter-matched baseline's MLP
is wider here (mlp_dim 192 matches BSA `dot`'s per-layer position projections at 6 layers too). The
isotropic Gaussian is left out (blind to direction at 2 layers; docs/results.md).
Results: docs/results.md, "Attribution: the digits ViT".
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does.
PINNED = {"num_layers": 6, "residual": "standard", "spatial_bandwidth_range": (0.5, 4.0)}

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
    "RoPE": PINNED | {"attention": "rope", "position_table": "none"},
    "RoPE base 4": PINNED | {"attention": "rope", "position_table": "none", "rope_base": 4.0},
}
