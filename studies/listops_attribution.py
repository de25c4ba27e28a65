"""Which ingredient of BSA `asymmetric` serves ListOps (configs/default.py: 2 layers of width 64, mean
pooling, expressions of depth <= 3 as LRA tokenises them), one change at a time, every variant with the
standard residual. Primary quantity: test accuracy.

    python study.py --config configs/default.py --variants studies/listops_attribution.py \
        --seeds 0,1,2,3,4 --workdir runs/study_listops_attribution --attacks pgd,reflect --epsilons 0.02

Each variant differs from the one it is read against in one ingredient (docs/results.md, "Attribution:
ListOps"): learned absolute positions (LRA's baseline) against the same with BSA's `gaussian` content
kernel (the content kernel); that against BSA's symmetric Laplacian of the token distance (the position
reading: an added table or a distance filter); the symmetric Laplacian against `asymmetric` (direction:
a bandwidth before and one after the query, the same initial reach); `asymmetric` with `dot` content (the
content kernel under the same spatial kernel); RoPE, the strongest other scheme.
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does.
PINNED = {"residual": "standard", "spatial_bandwidth_range": (1.0, 32.0)}

VARIANTS = {
    "learned absolute": PINNED | {"attention": "standard", "position_table": "learned"},
    "learned absolute, gaussian content": PINNED | {"attention": "bilateral", "content": "gaussian",
                                                    "spatial": "none", "position_table": "learned"},
    "BSA laplacian": PINNED | {"attention": "bilateral", "content": "gaussian", "spatial": "laplacian"},
    "BSA asymmetric": PINNED | {"attention": "bilateral", "content": "gaussian", "spatial": "asymmetric"},
    "BSA asymmetric, dot content": PINNED | {"attention": "bilateral", "content": "dot", "spatial": "asymmetric"},
    "RoPE": PINNED | {"attention": "rope", "position_table": "none"},
}
