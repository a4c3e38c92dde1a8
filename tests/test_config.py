"""itr_lib.config: run identity and the variant labels every table groups by."""


def test_variant_label_separates_method_hyper_parameters():
    from itr_lib.config import variant_label as variant_name
    base = {"method": "tgdt", "base_loss": "infonce", "false_negatives": "mask", "extra": {}}
    assert variant_name(base) == "tgdt | infonce +FN-mask"  # every method trains under its config's base loss
    diag = {**base, "base_loss": "triplet", "extra": {"warmup_epochs": 1, "margin": 0.1}}
    assert variant_name(diag) == "tgdt | triplet +FN-mask | margin=0.1,warmup_epochs=1"
    assert variant_name({**base, "method": "baseline"}) == "baseline | infonce +FN-mask"
    # the schedule is part of the label: runs of 3 and 6 epochs are never pooled
    assert variant_name({**base, "method": "baseline", "epochs": 6}) == "baseline | infonce +FN-mask | 6 ep"
    assert variant_name({**diag, "epochs": 3}) == "tgdt | triplet +FN-mask | 3 ep | margin=0.1,warmup_epochs=1"
    assert variant_name({**base, "captions_per_step": "one"}) == "tgdt | infonce +FN-mask 1cap"
    sa = {**base, "method": "selfalign", "lca": True, "cra": False, "codebook_size": 64, "epochs": 6}
    assert variant_name({**sa, "lca_weight": 1.0, "cra_weight": 0.5}) == "LCA K=64 | infonce +FN-mask | 6 ep"
    assert variant_name({**sa, "lca_weight": 0.3}) == "LCA K=64 w_lca=0.3 | infonce +FN-mask | 6 ep"
