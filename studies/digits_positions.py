"""Which reading of position serves the digits ViT (configs/digits_vit.py: 2 layers, a 4 x 4 patch grid
plus CLS), every variant with the standard residual.

    python study.py --config configs/digits_vit.py --variants studies/digits_positions.py \
        --seeds 0,1,2,3,4 --workdir runs/study_digits_positions --attacks fgsm,pgd,reflect \
        --attack_convention pixel --epsilons 8,16

Learned absolute positions (the baseline), none (the floor: attention alone is blind to order), RoPE on
the grid, BSA with the isotropic Gaussian of the coordinate distance (exactly invariant to the grid's
isometries: it cannot tell a digit from its transpose), BSA `dot` (TUPE features from 2-D tables, a
learned CLS position), BSA `shifted` (Gaussian with learned per-head displacements), and the isotropic
Gaussian with mean pooling instead of the place-less CLS token. Test accuracy, FGSM/PGD accuracy and
success rate on the clean-correct images, SNR and token uniformity at the last layer.
Results: docs/results.md, "Position schemes: the digits ViT".
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does: the
# standard residual (BSA variants also differ in their content kernel: docs/results.md) and the isotropic
# kernels' bandwidths.
STANDARD_RESIDUAL = {"residual": "standard", "spatial": "gaussian", "spatial_bandwidth_range": (0.5, 4.0)}

VARIANTS = {
    "learned absolute": STANDARD_RESIDUAL | {"attention": "standard", "position_table": "learned"},
    "no positions": STANDARD_RESIDUAL | {"attention": "standard", "position_table": "none"},
    "RoPE": STANDARD_RESIDUAL | {"attention": "rope", "position_table": "none"},
    "BSA gaussian": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "gaussian"},
    "BSA dot": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "dot", "position_table": "learned"},
    "BSA shifted": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "shifted"},
    "BSA gaussian, mean pooling": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "gaussian",
                                                       "model.pooling": "mean"},
}
