"""ListOps by LRA's recipe at up to 511 tokens (configs/lra_listops.py:small_512: depth <= 10, 2-10
arguments, LRA's tokenisation, 256 < length < 512; 2 layers of width 64, 2,500 steps of 32): BSA
`asymmetric` against learned absolute positions (LRA's baseline) and RoPE, every variant with the standard
residual. Primary quantity: test accuracy. Read beside the short ListOps of studies/listops_attribution.py,
which runs these three variants among its six: a contrast, not a controlled comparison, since
configs/default.py differs in more than the length (depth <= 3, <= 5 arguments, at most 63 tokens; 4
heads, its own optimiser settings and steps, bandwidths over 1-32): does BSA's edge grow with length?

    python study.py --config configs/lra_listops.py:small_512 --variants studies/listops_lra_length.py \
        --seeds 0,1,2,3,4 --workdir runs/study_listops_lra_length --attacks reflect

Every difference from LRA's ListOps (lra_benchmarks/listops; the config's docstring names the model's):
lengths 256-511 instead of 501-1999, 2,500 steps instead of 5,000, 2 x 64 instead of LRA's 4 x 512.
BSA's initial spatial bandwidths spread over 1 .. a quarter of the length (the config's). At LRA's own
length on a GPU (`:small`, 2,000 tokens), the same variants: `bash benchmarks/lra_gpu.sh`.
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does; BSA's
# bandwidth range is the config's (a quarter of its length), so that the same file serves `:small` at 2,000.
PINNED = {"residual": "standard"}

VARIANTS = {
    "learned absolute": PINNED | {"attention": "standard", "position_table": "learned"},
    "BSA asymmetric": PINNED | {"attention": "bilateral", "content": "gaussian", "spatial": "asymmetric"},
    "RoPE": PINNED | {"attention": "rope", "position_table": "none"},
}
