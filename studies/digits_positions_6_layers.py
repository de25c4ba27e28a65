"""The digits position study (studies/digits_positions.py) at 6 layers, for the baseline, RoPE and the best
BSA readings of the 2-layer study (`dot` and `shifted`), every variant with the standard residual.

    python study.py --config configs/digits_vit.py --variants studies/digits_positions_6_layers.py \
        --seeds 0,1,2,3,4 --workdir runs/study_digits_positions_6_layers --attacks fgsm,pgd,reflect \
        --attack_convention pixel --epsilons 8,16

Does depth close the gap between the readings (a deeper stack can compose relative offsets), or widen it?
Results: docs/results.md, "Position schemes: the digits ViT at 6 layers".
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does.
SIX_LAYERS = {"num_layers": 6, "residual": "standard", "spatial": "gaussian", "spatial_bandwidth_range": (0.5, 4.0)}

VARIANTS = {
    "learned absolute": SIX_LAYERS | {"attention": "standard", "position_table": "learned"},
    "RoPE": SIX_LAYERS | {"attention": "rope", "position_table": "none"},
    "BSA dot": SIX_LAYERS | {"attention": "bilateral", "spatial": "dot", "position_table": "learned"},
    "BSA shifted": SIX_LAYERS | {"attention": "bilateral", "spatial": "shifted"},
}
