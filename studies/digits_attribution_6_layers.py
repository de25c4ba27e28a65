"""The digits attribution study (studies/digits_attribution.py) at 6 layers: which ingredient of BSA `dot`
serves a deeper digits ViT, one change at a time, every variant with the standard residual. Primary
quantity: test accuracy.

    python study.py --config configs/digits_vit.py --variants studies/digits_attribution_6_layers.py \
        --seeds 0,1,2,3,4 --workdir runs/study_digits_attribution_6_layers --attacks fgsm,pgd,reflect \
        --attack_convention pixel --epsilons 8,16

The variants are the 2-layer study's, at 6 layers, for the ingredients that mattered there: the untied
position reading (TUPE), BSA's content kernel beside it (BSA `dot` against TUPE), the parameters (mlp_dim
192 still matches BSA `dot`: 252,618 against 252,474), and RoPE, which depth was seen to help. The
temperature, the content kernel beside an added table, RoPE's base and the isotropic Gaussian changed
nothing (or lost) at 2 layers and are left out.
Results: docs/results.md, "At 6 layers (digits)".
"""
import pathlib
import runpy

PRIMARY = "accuracy"  # the quantity on which a difference holds (Holm over the comparisons with the baseline)

TWO_LAYERS = runpy.run_path(str(pathlib.Path(__file__).with_name("digits_attribution.py")))["VARIANTS"]
KEPT = ("learned absolute", "learned absolute, MLP 192", "TUPE", "BSA dot", "RoPE")
VARIANTS = {name: TWO_LAYERS[name] | {"num_layers": 6} for name in KEPT}
