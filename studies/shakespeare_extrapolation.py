"""Train short, test long (Press et al. 2022, the ALiBi paper's Figure 1) on the Shakespeare character LM
(configs/shakespeare_char_lm.py:small: 2 causal layers of width 64, context 64, 600 steps of 32), every
variant with the standard residual: test perplexity in windows of 64 to 2,048 characters. Primary
quantity: test perplexity at 1,024 (16 x the training context).

    python study.py --config configs/shakespeare_char_lm.py:small --variants studies/shakespeare_extrapolation.py \
        --seeds 0,1,2,3,4 --workdir runs/study_shakespeare_extrapolation --attacks contamination \
        --eval_lengths 64,128,256,512,1024,2048

ALiBi (fixed slopes 2^-8h/H; the baseline: the scheme built to extrapolate), BSA's causal Laplacian with
learned bandwidths h_p (ALiBi's form with a content kernel of its own and h_p learned per head: the
summary's `bandwidths` says how far each head reaches), RoPE, sinusoidal absolute positions (Vaswani et
al.'s, embeddings x sqrt(d)) and no positions at all (NoPE: a causal mask alone orders the tokens).
Trained at context 128: the same command with --config.data.max_length=128
--config.model.transformer.max_length=128 and another --workdir.
Results: docs/results.md, "Train short, test long: the Shakespeare character LM" (and "Trained at 128").
"""

PRIMARY = "perplexity at 1024"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does.
PINNED = {"residual": "standard", "spatial_bandwidth_range": (1.0, 64.0)}

VARIANTS = {
    "ALiBi": PINNED | {"attention": "alibi", "position_table": "none"},
    "BSA laplacian": PINNED | {"attention": "bilateral", "content": "dot", "spatial": "laplacian"},
    "RoPE": PINNED | {"attention": "rope", "position_table": "none"},
    "sinusoidal absolute": PINNED | {"attention": "standard", "position_table": "sinusoidal"},
    "no positions": PINNED | {"attention": "standard", "position_table": "none"},
}
