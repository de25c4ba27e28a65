"""Which reading of position serves ListOps (configs/default.py: 2 layers of width 64, mean pooling,
expressions of depth <= 3 as LRA tokenises them), every variant with the standard residual.

    python study.py --config configs/default.py --variants studies/listops_positions.py \
        --seeds 0,1,2,3,4 --workdir runs/study_listops_positions --attacks pgd,reflect --epsilons 0.02

Learned absolute positions (the baseline), RoPE, BSA with the isotropic Gaussian of the token distance
(exactly invariant to reversing the expression), BSA `asymmetric` (a Laplacian with its own bandwidth
before and after the query) and BSA `dot` (TUPE features from a learned table). Test accuracy, PGD in
embedding space at a radius that leaves accuracy above the floor (0.02 of the mean embedding norm), accuracy on the reversed expressions
(`reflect`), SNR and token uniformity at the last layer.
Results: docs/results.md, "Position schemes: ListOps".
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does: the
# standard residual (BSA variants also differ in their content kernel: docs/results.md) and the isotropic
# kernels' bandwidths.
STANDARD_RESIDUAL = {"residual": "standard", "spatial": "gaussian", "spatial_bandwidth_range": (1.0, 32.0)}

VARIANTS = {
    "learned absolute": STANDARD_RESIDUAL | {"attention": "standard", "position_table": "learned"},
    "BSA asymmetric": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "asymmetric"},
    "BSA dot": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "dot", "position_table": "learned"},
    "RoPE": STANDARD_RESIDUAL | {"attention": "rope", "position_table": "none"},
    "BSA gaussian": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "gaussian"},
}
