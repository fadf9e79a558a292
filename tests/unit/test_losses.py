"""Every loss against a naive reference written here with explicit loops, plus the local-rows decomposition
the distributed train step relies on, and the errors for bad parameters."""
import math

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, TrainJobConfig, load_config
from pipeline.losses import LOSSES, InfoNCE, build_loss

N, D = 7, 4


def _emb(seed=0, n=N, d=D):
    g = torch.Generator().manual_seed(seed)
    f = lambda: torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)  # noqa
    return f(), f()


def sims(x, y):
    return [[float(sum(x[i, k] * y[j, k] for k in range(x.shape[1]))) for j in range(y.shape[0])]
            for i in range(x.shape[0])]


def ce(row, i):
    m = max(row)
    return -(row[i] - m - math.log(sum(math.exp(v - m) for v in row)))


def naive_infonce(x, y, scale, smoothing=0.0):
    s, n, total = sims(x, y), len(x), 0.0
    for i in range(n):
        for row in ([scale * v for v in s[i]], [scale * s[j][i] for j in range(n)]):
            nll = ce(row, i)
            smooth = sum(ce(row, j) for j in range(n)) / n
            total += (1 - smoothing) * nll + smoothing * smooth
    return total / (2 * n)


def naive_siglip(x, y, scale, bias):
    s, n, total = sims(x, y), len(x), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-z * (scale * s[i][j] + bias)))
    return total / n


def naive_vse(x, y, margin, hardest):
    s, n, total = sims(x, y), len(x), 0.0
    for i in range(n):
        costs_i = [max(0.0, margin - s[i][i] + s[i][j]) for j in range(n) if j != i]
        costs_t = [max(0.0, margin - s[i][i] + s[j][i]) for j in range(n) if j != i]
        total += (max(costs_i) + max(costs_t)) if hardest else (sum(costs_i) + sum(costs_t))
    return total / n


def naive_contrastive(x, y, margin):
    n, total = len(x), 0.0
    for i in range(n):
        for j in range(n):
            d = float(torch.dist(x[i], y[j]))
            total += 0.5 * d * d if i == j else 0.5 * max(0.0, margin - d) ** 2 / (n - 1)
    return total / n


def naive_triplet(x, y, margin, mining):
    n, total = len(x), 0.0
    for a, o in ((x, y), (y, x)):
        for i in range(n):
            d2 = [float(torch.dist(a[i], o[j])) ** 2 for j in range(n)]
            negs = [d2[j] for j in range(n) if j != i]
            if mining == "all":
                total += sum(max(0.0, d2[i] - dn + margin) for dn in negs) / (n - 1)
                continue
            if mining == "hardest":
                dn = min(negs)
            else:
                farther = [v for v in negs if v > d2[i]]
                dn = min(farther) if farther else max(negs)
            total += max(0.0, d2[i] - dn + margin)
    return total / (2 * n)


def naive_npair(x, y):
    s, n, total = sims(x, y), len(x), 0.0
    for i in range(n):
        total += math.log(1 + sum(math.exp(s[i][j] - s[i][i]) for j in range(n) if j != i))
        total += math.log(1 + sum(math.exp(s[j][i] - s[i][i]) for j in range(n) if j != i))
    return total / (2 * n)


def naive_lifted(x, y, margin):
    """Song et al.'s J for each positive pair (x_i, y_i): the log of the summed exp(m - d) over the negatives of
    both members, plus the positive's distance; 1/2 [J]_+^2 averaged over the pairs."""
    n, total = len(x), 0.0
    for i in range(n):
        negs = [math.exp(margin - float(torch.dist(x[i], y[k]))) for k in range(n) if k != i]
        negs += [math.exp(margin - float(torch.dist(x[l], y[i]))) for l in range(n) if l != i]  # noqa: E741
        j = math.log(sum(negs)) + float(torch.dist(x[i], y[i]))
        total += 0.5 * max(0.0, j) ** 2
    return total / n


def naive_dcca(h1, h2, k, r1, r2):
    """Covariances by explicit sums over samples; correlations as square roots of the eigenvalues of
    S11^-1 S12 S22^-1 S21 (a different route than the loss's SVD of the whitened cross-covariance)."""
    h1, h2 = h1.numpy(), h2.numpy()
    n, d = h1.shape
    m1, m2 = sum(h1) / n, sum(h2) / n
    s11, s22, s12 = np.zeros((d, d)), np.zeros((d, d)), np.zeros((d, d))
    for t in range(n):
        a, b = h1[t] - m1, h2[t] - m2
        s11 += np.outer(a, a)
        s22 += np.outer(b, b)
        s12 += np.outer(a, b)
    s11, s22, s12 = s11 / (n - 1) + r1 * np.eye(d), s22 / (n - 1) + r2 * np.eye(d), s12 / (n - 1)
    ev = np.linalg.eigvals(np.linalg.solve(s11, s12) @ np.linalg.solve(s22, s12.T)).real
    corr = np.sort(np.sqrt(np.clip(ev, 0, None)))[::-1]
    return -float(corr[:k].sum())


CASES = [
    ("infonce", {"temperature": 0.1}, lambda x, y, l: naive_infonce(x, y, float(l.scale().detach()))),
    ("infonce", {"temperature": 0.5, "label_smoothing": 0.1},
     lambda x, y, l: naive_infonce(x, y, float(l.scale().detach()), 0.1)),
    ("siglip", {}, lambda x, y, l: naive_siglip(x, y, float(l.scale().detach()), float(l.logit_bias.detach()))),
    ("vse", {"margin": 0.3}, lambda x, y, l: naive_vse(x, y, 0.3, False)),
    ("vse++", {"margin": 0.3}, lambda x, y, l: naive_vse(x, y, 0.3, True)),
    ("contrastive", {"margin": 1.2}, lambda x, y, l: naive_contrastive(x, y, 1.2)),
    ("triplet", {"margin": 0.4, "mining": "hardest"}, lambda x, y, l: naive_triplet(x, y, 0.4, "hardest")),
    ("triplet", {"margin": 0.4, "mining": "semi-hard"}, lambda x, y, l: naive_triplet(x, y, 0.4, "semi-hard")),
    ("triplet", {"margin": 0.4, "mining": "all"}, lambda x, y, l: naive_triplet(x, y, 0.4, "all")),
    ("npair", {}, lambda x, y, l: naive_npair(x, y)),
    ("lifted", {"margin": 1.0}, lambda x, y, l: naive_lifted(x, y, 1.0)),
    ("lifted", {"margin": 0.3}, lambda x, y, l: naive_lifted(x, y, 0.3)),
    ("dcca", {"top_k": 3, "r1": 1e-2, "r2": 1e-3}, lambda x, y, l: naive_dcca(x, y, 3, 1e-2, 1e-3)),
]


@pytest.mark.parametrize("name,params,naive", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_loss_matches_naive_loop(name, params, naive):
    x, y = _emb()
    loss = build_loss(name, **params).double()
    got = float(loss(x, y).detach())
    assert got == pytest.approx(naive(x, y, loss), rel=1e-9, abs=1e-12)


def test_every_loss_has_a_naive_reference_and_a_formula():
    assert {c[0] for c in CASES} == set(LOSSES)
    for cls in LOSSES.values():
        assert "L =" in (cls.__doc__ or "") or "L = " in (cls.__mro__[1].__doc__ or "")


@pytest.mark.parametrize("name", [n for n in LOSSES if n != "dcca"])
def test_local_rows_average_to_the_full_loss(name):
    """What each worker computes (its rows against all columns) averages to the single-batch loss."""
    x, y = _emb(1, n=8)
    loss = build_loss(name).double()
    full = float(loss(x, y).detach())
    parts = [float(loss(x[s:s + 2], y[s:s + 2], image_all=x, text_all=y, offset=s).detach())
             for s in range(0, 8, 2)]
    assert sum(parts) / 4 == pytest.approx(full, rel=1e-12)


def test_dcca_every_worker_computes_the_global_objective():
    x, y = _emb(2, n=12)
    loss = build_loss("dcca").double()
    assert float(loss(x[:4], y[:4], image_all=x, text_all=y, offset=0)) == pytest.approx(float(loss(x, y)))


@torch.no_grad()  # reading learnable scalars: float() of a tensor that needs grad warns
def test_logit_scale_clamped_and_fixed_when_not_learned():
    assert float(InfoNCE(temperature=0.001).scale()) == pytest.approx(100.0)  # the init is capped too
    assert not InfoNCE(learn_temperature=False).logit_scale.requires_grad
    assert float(InfoNCE().logit_scale) == pytest.approx(math.log(1 / 0.07))
    sig = build_loss("siglip")
    assert float(sig.scale()) == pytest.approx(10.0, rel=1e-6) and float(sig.logit_bias) == -10.0


@pytest.mark.parametrize("name,params,match", [
    ("nope", {}, "choose one of"),
    ("infonce", {"margin": 0.2}, "takes no parameter 'margin'"),
    ("vse", {"margin": 5.0}, r"margin=5.0 must lie in \[0, 4"),
    ("contrastive", {"margin": 3.0}, r"must lie in \[0, 2"),
    ("lifted", {"margin": 2.5}, r"must lie in \[0, 2"),
    ("infonce", {"temperature": 0.0}, "temperature=0.0 must lie"),
    ("triplet", {"mining": "random"}, "choose one of"),
    ("dcca", {"r1": 0.0}, "r1, r2 > 0"),
])
def test_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, **params)


def test_dcca_batch_not_larger_than_dim():
    x, y = _emb(n=4, d=6)
    with pytest.raises(ValueError, match="larger than the embedding dimension"):
        build_loss("dcca")(x, y)


BASE = ["data.train=a", "data.val=b"]


@pytest.mark.parametrize("overrides,match", [
    (["loss.margin=0.2"], "loss.margin is set but loss 'infonce' takes no margin"),
    (["loss.name=vse", "loss.temperature=0.1"], "takes no temperature"),
    (["loss.name=vse", "loss.margin=-1"], "margin=-1.0 must lie"),
    (["loss.temperature=50"], "temperature=50.0 must lie"),
    (["loss.name=dcca", "train.batch_size=64", "model.embed_dim=128"], "dcca needs train.batch_size > model.embed_dim"),
])
def test_loss_config_errors_before_training(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainJobConfig, None, BASE + overrides)


def test_every_loss_builds_from_config():
    for name in LOSSES:
        cfg = load_config(TrainJobConfig, None, BASE + [f"loss.name={name}"])
        assert isinstance(build_loss(cfg.loss), LOSSES[name])


DCCA_DEMO = ["train.batch_size=256"]  # what configs/demo.yaml's comment and bench/loss_table.py add for dcca


@pytest.mark.parametrize("name", list(LOSSES))
def test_demo_recipe_accepts_every_loss(name):
    from pathlib import Path

    from pipeline.config import RunJobConfig

    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    extra = []
    if name == "dcca":  # the demo's global batch (128) is not above its embedding dimension (128)
        with pytest.raises(ConfigError, match=r"dcca needs train.batch_size > model.embed_dim \(128 <= 128\)"):
            load_config(RunJobConfig, demo, [f"loss.name={name}"])
        extra = DCCA_DEMO
    cfg = load_config(RunJobConfig, demo, [f"loss.name={name}", *extra])
    assert isinstance(build_loss(cfg.loss), LOSSES[name])


def test_dcca_retrieval_maps_whiten_and_align_the_views():
    """After tracking a batch, the maps turn the two views into canonical variates: identity covariance
    within each view, diagonal (the canonical correlations) across them."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(400, 3, generator=g, dtype=torch.float64)
    h1 = z @ torch.randn(3, 3, generator=g, dtype=torch.float64) + 0.1 * torch.randn(400, 3, generator=g, dtype=torch.float64)
    h2 = z @ torch.randn(3, 3, generator=g, dtype=torch.float64) + 0.5 * torch.randn(400, 3, generator=g, dtype=torch.float64)
    loss = build_loss("dcca", r1=1e-6, r2=1e-6).double()
    corr = -float(loss(h1, h2))
    m1, w1, m2, w2 = loss.retrieval_maps()
    c1, c2 = (h1 - m1) @ w1, (h2 - m2) @ w2
    cov = lambda a, b: a.T @ b / (len(a) - 1)  # noqa: E731
    torch.testing.assert_close(cov(c1, c1), torch.eye(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(cov(c2, c2), torch.eye(3, dtype=torch.float64), atol=1e-4, rtol=0)
    cross = cov(c1, c2)
    assert float(cross.diagonal().sum()) == pytest.approx(corr, rel=1e-4)
    torch.testing.assert_close(cross - torch.diag(cross.diagonal()), torch.zeros(3, 3, dtype=torch.float64),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_a_scale_above_the_cap_keeps_its_gradient_and_comes_back(name):
    """The cap is applied to the parameter after the step: above it the gradient is not zero, so the scale
    can move (a clamp inside forward would freeze it there for good)."""
    from pipeline.losses import MAX_LOGIT_SCALE
    from pipeline.training.optimisation import logit_scale_record

    x, y = _emb(3, n=8)
    loss = build_loss(name)
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(MAX_LOGIT_SCALE) + 0.5)
    loss(x, y).backward()
    assert loss.logit_scale.grad is not None and float(loss.logit_scale.grad.abs()) > 0
    opt = torch.optim.SGD(loss.parameters(), lr=0.01)
    before = loss.logit_scale.item()
    opt.step()
    assert loss.logit_scale.item() != before  # the optimiser moved it
    loss.clamp_parameters_()
    rec = logit_scale_record(loss)
    assert rec["train/logit_scale_param"] <= math.log(MAX_LOGIT_SCALE) + 1e-6
    assert rec["train/logit_scale"] == pytest.approx(math.exp(rec["train/logit_scale_param"]))
    assert rec["train/logit_scale"] <= MAX_LOGIT_SCALE * (1 + 1e-6)


def test_the_config_registry_matches_the_components():
    """Config validation reads plain registries (no torch at load time); they must name what the code has."""
    from pipeline import registry
    from pipeline.index.faiss_indexes import TYPES
    from pipeline.losses import LOSSES, loss_params
    from pipeline.models.image import IMAGE_ARCHS, build_image_tower
    from pipeline.models.text import POOLINGS

    assert {n: tuple(loss_params(n)) for n in LOSSES} == registry.LOSS_PARAMS
    assert POOLINGS == registry.TEXT_POOLINGS and TYPES == registry.INDEX_TYPES
    assert build_image_tower("small_cnn", width=4) is not None and "small_cnn" in IMAGE_ARCHS
