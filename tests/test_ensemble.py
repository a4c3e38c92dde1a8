"""itr_lib.ensemble: the concatenated vectors' inner product is the mean of the members' similarities, the ensemble
scores through itr_lib.scoring / faiss like any model, and mixing datasets, text encoders or non-vector models fails."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
from synthetic_split import synthetic_split, tiny_model

from itr_lib.config import TrainConfig
from itr_lib.ensemble import EnsembleModel, load_ensemble
from itr_lib.scoring import encode_split, evaluate, score_matrix


@pytest.fixture(scope="module")
def test_split():
    return synthetic_split("test", 12, seed=3)


def _member_sims(models, data):
    """Each member's own score matrix (its ``similarity`` over its own encoder outputs), float64."""
    out = []
    for m in models:
        img, txt = encode_split(m, data, outputs="all")
        out.append(score_matrix(m, img, txt, fn=m.similarity).astype(np.float64))
    return out


@pytest.mark.parametrize("kind", ["baseline", "cra"])
def test_concatenated_inner_product_is_the_mean_similarity(test_split, kind):
    kw = {"cra": True} if kind == "cra" else {}  # CRA: asymmetric, non-unit vectors [e, a/2, b/2] . [e, c, d]
    models = [tiny_model(seed=s, dim=8, **kw) for s in range(3)]
    ens = EnsembleModel(models).eval()
    img, txt = encode_split(ens, test_split, outputs="vectors")
    got = (img["vec"].double() @ txt["vec"].double().T).numpy()
    sims = _member_sims(models, test_split)
    want = np.mean(sims, axis=0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(sims[0] - want).max() > 1e-3  # the members differ, so the mean is not any one of them
    # the same through scoring.evaluate (its metrics equal those of the mean matrix) and through one faiss search
    from itr_lib.metrics import retrieval_metrics
    res = evaluate(ens, test_split)
    ref = retrieval_metrics(want.astype(np.float32), test_split.img2txt, test_split.txt2img)
    assert res["standard"]["i2t_r1"] == pytest.approx(ref["i2t_r1"], abs=1e-6)
    from itr_lib.index import knn_search
    _, ids = knn_search(txt["vec"], img["vec"], k=5, normalize=False)  # identical captions tie: compare scores
    np.testing.assert_allclose(np.take_along_axis(want, ids, 1), -np.sort(-want, axis=1)[:, :5], atol=1e-6)


def test_footprint_and_normalize(test_split):
    models = [tiny_model(seed=s, dim=8) for s in range(2)]
    fp = EnsembleModel(models).footprint(test_split)
    assert fp == {"m": 2, "member_dims": [8, 8], "dim": 16, "bytes_per_image": 2 * 8 * 4, "bytes_per_text": 64,
                  "dtype": "float32"}
    cra = [tiny_model(seed=s, dim=8, cra=True) for s in range(2)]
    assert EnsembleModel(cra).footprint(test_split)["bytes_per_image"] == 2 * 3 * 8 * 4
    # normalize=True: the mean of the members' cosines (differs from the raw mean for CRA's non-unit vectors)
    ens = EnsembleModel(cra, normalize=True).eval()
    img, txt = encode_split(ens, test_split, outputs="vectors")
    cos = []
    for m in cra:
        i, t = encode_split(m, test_split, outputs="vectors")
        cos.append(torch.nn.functional.normalize(i["vec"], dim=-1) @ torch.nn.functional.normalize(t["vec"], dim=-1).T)
    np.testing.assert_allclose((img["vec"] @ txt["vec"].T).numpy(), torch.stack(cos).mean(0).numpy(), atol=1e-6)


def test_mixing_is_an_error():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    cfg = TrainConfig(dataset="rsicd", dim=8)
    with pytest.raises(ValueError, match="disagree on dataset"):
        EnsembleModel([a, b], [cfg, TrainConfig(dataset="ucm", dim=8)])
    with pytest.raises(ValueError, match="disagree on text_encoder"):
        EnsembleModel([a, b], [cfg, TrainConfig(dataset="rsicd", dim=8, text_encoder="gru")])
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleModel([a])

    class TwoStage(torch.nn.Module):
        exact_vectors = False
    with pytest.raises(ValueError, match="exact_vectors = False"):
        EnsembleModel([a, TwoStage()])
    with pytest.raises(TypeError, match="inference only"):
        EnsembleModel([a, b]).compute_loss(None, None, None, 0)


def test_load_ensemble_checks_the_checkpoints(tmp_path):
    from itr_lib.train import make_model
    paths = []
    for seed, dataset in ((0, "rsicd"), (1, "rsicd"), (2, "ucm")):
        cfg = TrainConfig(dataset=dataset, dim=8, seed=seed)
        torch.manual_seed(seed)
        p = tmp_path / f"{dataset}{seed}.pt"
        torch.save({"model": make_model(cfg).state_dict(), "config": asdict(cfg)}, p)
        paths.append(p)
    ens = load_ensemble(paths[:2])
    assert ens.m == 2 and not ens.training and [c.seed for c in ens.configs] == [0, 1]
    with pytest.raises(ValueError, match="disagree on dataset"):
        load_ensemble(paths[1:])
