"""Which position scheme serves the character LM (configs/shakespeare_char_lm.py:small: 2 layers of width
64, 4 heads, context 64, 600 steps of 32), every variant with the standard residual.

    python study.py --config configs/shakespeare_char_lm.py:small --variants studies/shakespeare_positions.py \
        --seeds 0,1,2,3,4 --workdir runs/study_shakespeare_positions

Learned and sinusoidal absolute positions (the baseline: learned), RoPE, ALiBi (fixed slopes 2^-8h/H),
BSA with the causal Laplacian (learned bandwidths, spread 1..64 at start) and the same with ALiBi's
initial bandwidths 1 / m_h (2^2 .. 2^8 for 4 heads). Test perplexity, contaminated perplexity (whole text
and uncontaminated targets), SNR and token uniformity at the last layer. At 600 steps this measures
learning speed as much as quality: the longer run (`--config.train.num_steps=...`) tells them apart.
Results: docs/results.md, "Position schemes: the Shakespeare character LM".
"""

PRIMARY = "perplexity"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does: the
# standard residual (BSA variants also differ in their content kernel: docs/results.md).
STANDARD_RESIDUAL = {"residual": "standard"}

VARIANTS = {
    "learned absolute": STANDARD_RESIDUAL | {"attention": "standard", "position_table": "learned"},
    "sinusoidal absolute": STANDARD_RESIDUAL | {"attention": "standard", "position_table": "sinusoidal"},
    "RoPE": STANDARD_RESIDUAL | {"attention": "rope", "position_table": "none"},
    "ALiBi": STANDARD_RESIDUAL | {"attention": "alibi", "position_table": "none"},
    "BSA laplacian": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "laplacian"},
    "BSA laplacian, ALiBi bandwidths": STANDARD_RESIDUAL | {"attention": "bilateral", "spatial": "laplacian",
                                                            "spatial_bandwidth_range": (4.0, 256.0)},
}
