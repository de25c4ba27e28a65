"""GRC where depth exists: the digits ViT (configs/digits_vit.py: BSA `dot`, a 4 x 4 patch grid plus CLS)
at 8 layers, pre-LN and post-LN, the standard residual against GRC's forms; the attention is the same in
every variant, so only the residual (and the norm's place) differs.

    python study.py --config configs/digits_vit.py --variants studies/digits_grc_depth.py \
        --seeds 0,1,2,3,4 --workdir runs/study_digits_grc_depth --attacks fgsm,pgd \
        --attack_convention pixel --epsilons 8,16

Per norm: the standard residual (the baseline, pre-LN), GRC `convex` with t starting at 0.1 and at 0.3,
GRC `boost` (t0 0.1) and `convex` with one t per channel (t0 0.1), each on the attention sublayer (the
MLP keeps the standard residual). Test accuracy, FGSM/PGD accuracy and success rate, SNR and token
uniformity per layer (snr.png, uniformity.png) and the learned t per layer (grc_t.png). The paired
differences from the pre-LN standard residual say what GRC does at pre-LN; post-LN variants are compared
with the same baseline, so "post-LN, standard" is the price of moving the norm (`--baseline "post-LN,
standard"` compares the post-LN forms with it instead).
Results: docs/results.md, "GRC at 8 layers, pre-LN and post-LN".
"""

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

# Shared by every variant and pinned, so that the study does not move when the shipped config does.
DEEP_BSA = {"num_layers": 8, "attention": "bilateral", "spatial": "dot", "position_table": "learned",
            "grc_sublayers": ("attention",), "grc_per_channel": False, "grc_t_init": 0.1, "grc_form": "convex"}

RESIDUALS = {
    "standard": {"residual": "standard"},
    "convex t0 0.1": {"residual": "grc"},
    "convex t0 0.3": {"residual": "grc", "grc_t_init": 0.3},
    "boost": {"residual": "grc", "grc_form": "boost"},
    "convex per channel": {"residual": "grc", "grc_per_channel": True},
}

# The 2 x 2 of residual x norm first (the study resumes in this order), then the other forms.
ORDER = [("pre", "standard"), ("pre", "convex t0 0.1"), ("post", "standard"), ("post", "convex t0 0.1")]
ORDER += [(norm, name) for norm in ("pre", "post") for name in RESIDUALS if (norm, name) not in ORDER]
VARIANTS = {f"{norm}-LN, {name}": DEEP_BSA | {"norm": norm} | RESIDUALS[name] for norm, name in ORDER}
