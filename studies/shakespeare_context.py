"""Does each position scheme use a longer context? The Shakespeare character LM
(configs/shakespeare_char_lm.py:small: 2 causal layers of width 64) trained at contexts of 64, 256 and
1,024 characters with the same 8,192 characters per step (batches of 128, 32 and 8: the smallest that 8
devices divide at 1,024; the eval batch scaled alike) for 300 steps (half an epoch; `:small`: 600 steps
of 2,048), every variant with the standard residual; test perplexity at its own context. Primary
quantity: test perplexity.

    python study.py --config configs/shakespeare_char_lm.py:small --variants studies/shakespeare_context.py \
        --seeds 0,1,2,3,4 --workdir runs/study_shakespeare_context --attacks contamination

ALiBi (the baseline at 64), RoPE and BSA's causal Laplacian with learned bandwidths h_p (dot content), the
three schemes defined at any length. Each variant differs from another in one thing: its context (the
same scheme; `--baseline "RoPE, context 64" --variant "RoPE, context 1024"`) or its scheme (the same
context; `--baseline "ALiBi, context 1024"`). A batch of 8 windows of 1,024 sees the text in fewer, longer
pieces: the gradient noise differs with the context too, which is part of training at that context.
"""

PRIMARY = "perplexity"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does.
PINNED = {"residual": "standard", "spatial_bandwidth_range": (1.0, 64.0)}
SCHEMES = {
    "ALiBi": {"attention": "alibi", "position_table": "none"},
    "RoPE": {"attention": "rope", "position_table": "none"},
    "BSA laplacian": {"attention": "bilateral", "content": "dot", "spatial": "laplacian"},
}
CHARACTERS_PER_STEP = 8_192


def at_context(length: int) -> dict:
  """The overrides that train at a context of `length` characters for 300 steps of CHARACTERS_PER_STEP,
  evaluated in batches of as many tokens as `:small`'s (256 x 64)."""
  return {"data.max_length": length, "max_length": length, "train.batch_size": CHARACTERS_PER_STEP // length,
          "train.num_steps": 300, "eval.batch_size": 256 * 64 // length}


VARIANTS = {f"{scheme}, context {length}": PINNED | overrides | at_context(length)
            for length in (64, 256, 1024) for scheme, overrides in SCHEMES.items()}
