"""Closed-form CCA against a direct reference, mergeable statistics, kernel maps. No Ray."""
import numpy as np
import pytest

from pipeline.baselines.cca import (CCAStats, build_kernel_map, fit_linear_cca, gaussian_kernel, inverse_sqrt,
                                    median_distance)


def _paired(n=400, dx=6, dy=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))  # shared latent: three correlated directions
    x = z @ rng.normal(size=(3, dx)) + 0.7 * rng.normal(size=(n, dx)) + 3.0
    y = z @ rng.normal(size=(3, dy)) + 1.1 * rng.normal(size=(n, dy)) - 1.0
    return x, y


def _reference_correlations(x, y):
    """Canonical correlations straight from the data: the cosines of the principal angles between the
    column spaces of the centred views, i.e. the singular values of Qxᵀ Qy."""
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def test_correlations_match_direct_reference():
    x, y = _paired()
    cca = fit_linear_cca(CCAStats.of(x, y), k=5, r1=0.0, r2=0.0)
    np.testing.assert_allclose(cca.correlations, _reference_correlations(x, y), rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(cca.correlations) <= 1e-12)


def test_linear_map_of_x_is_perfectly_correlated():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    y = x @ rng.normal(size=(4, 4)) + 2.0  # invertible affine map
    cca = fit_linear_cca(CCAStats.of(x, y), k=4, r1=0.0, r2=0.0)
    np.testing.assert_allclose(cca.correlations, 1.0, atol=1e-9)


def test_independent_views_are_weakly_correlated():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3))
    assert fit_linear_cca(CCAStats.of(x, y), k=3, r1=0.0, r2=0.0).correlations.max() < 0.05


def test_canonical_variables_are_white_and_paired():
    x, y = _paired(seed=3)
    cca = fit_linear_cca(CCAStats.of(x, y), k=5, r1=0.0, r2=0.0)
    u, v = cca.transform_x(x), cca.transform_y(y)
    np.testing.assert_allclose(np.cov(u.T), np.eye(5), atol=1e-9)  # unit variance, uncorrelated
    np.testing.assert_allclose(np.cov(v.T), np.eye(5), atol=1e-9)
    cross = (u - u.mean(0)).T @ (v - v.mean(0)) / (len(u) - 1)
    np.testing.assert_allclose(cross, np.diag(cca.correlations), atol=1e-9)


def test_ridge_shrinks_correlations():
    x, y = _paired(n=60, dx=20, dy=20, seed=4)  # few samples, many dims: plain CCA overfits towards 1
    plain = fit_linear_cca(CCAStats.of(x, y), k=20, r1=0.0, r2=0.0).correlations
    ridged = fit_linear_cca(CCAStats.of(x, y), k=20, r1=0.1, r2=0.1).correlations
    assert np.all(ridged <= plain + 1e-12) and ridged[0] < 1


@pytest.mark.parametrize("sizes", [[1, 399], [100, 100, 200], [7] * 57 + [1]])
def test_merged_chunks_equal_one_pass(sizes):
    x, y = _paired(seed=5)
    whole = CCAStats.of(x, y)
    bounds = np.cumsum([0, *sizes])
    parts = [CCAStats.of(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = CCAStats(x.shape[1], y.shape[1])
    for p in parts[::-1]:  # the order of the merge does not matter
        merged.merge(p)
    assert merged.n == whole.n == 400
    for name in ("mean_x", "mean_y", "cxx", "cyy", "cxy"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-10, atol=1e-9)
    # and the same through the row form that Ray Data carries
    rows = [p.to_row() for p in parts]
    back = CCAStats.from_rows({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
    np.testing.assert_allclose(back.cxy, whole.cxy, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(np.cov(x.T), whole.covariances()[0], rtol=1e-10)


def test_inverse_sqrt_and_rank_deficiency():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(5, 5))
    c = a @ a.T + np.eye(5)
    r = inverse_sqrt(c)
    np.testing.assert_allclose(r @ c @ r, np.eye(5), atol=1e-9)
    c[:, 4] = c[4, :] = 0  # a feature that never varies: dropped, not infinite
    assert np.all(np.isfinite(inverse_sqrt(c)))


def test_median_distance_hand_case():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # distances 5, 5, 10
    assert median_distance(pts) == 5.0


@pytest.mark.parametrize("kind", ["rff", "nystrom"])
def test_kernel_approximation_improves_with_features(kind):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 5))
    sigma = median_distance(x)
    exact = gaussian_kernel(x, x, sigma)
    errs = []
    for d in (16, 128, 1024 if kind == "rff" else 300):
        z = build_kernel_map(kind, x, d, sigma, seed=1)(x)
        errs.append(np.abs(z @ z.T - exact).mean())
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < (0.05 if kind == "rff" else 1e-6)  # Nyström on all rows reproduces the kernel


def test_kernel_cca_finds_a_nonlinear_relation():
    rng = np.random.default_rng(8)
    x = rng.uniform(-2, 2, size=(3000, 1))
    y = x ** 2 + 0.05 * rng.normal(size=x.shape)  # linearly uncorrelated, kernel-correlated
    assert fit_linear_cca(CCAStats.of(x, y), k=1, r1=0, r2=0).correlations[0] < 0.1
    fx, fy = build_kernel_map("rff", x, 200, seed=1), build_kernel_map("rff", y, 200, seed=2)
    assert fit_linear_cca(CCAStats.of(fx(x), fy(y)), k=1, r1=1e-3, r2=1e-3).correlations[0] > 0.9


def test_report_shows_baselines_beside_the_model(tmp_path):
    import json

    from pipeline.report import write_report

    block = {"R@1": 50.0, "R@5": 80.0, "R@10": 90.0, "medr": 1.0, "meanr": 3.0}
    weak = {"R@1": 10.0, "R@5": 30.0, "R@10": 40.0, "medr": 12.0, "meanr": 40.0}
    metrics = {"i2t": block, "t2i": block, "rsum": 440.0, "n_images": 10, "n_captions": 50,
               "baselines": {"linear_cca": {"description": "linear CCA: pixels 16x16 + bag of words", "rsum": 160.0,
                                            "i2t": weak, "t2i": weak, "k": 8}}}
    index = {"type": "flat", "recall@10_vs_exact": 1.0, "build_s": 0.0, "qps": 1.0}
    rep = write_report(tmp_path, metrics, index, "ckpt", {})
    assert json.loads((tmp_path / "report.json").read_text())["baselines"]["linear_cca"]["rsum"] == 160.0
    md = (tmp_path / "report.md").read_text()
    assert "## Baselines" in md and "| this model |" in md and "| linear CCA: pixels 16x16 + bag of words |" in md
    assert "160.0" in md and "440.0" in md
    page = (tmp_path / "report.html").read_text()
    assert "Baselines" in page and "160.0" in page
    assert rep["rsum"] == 440.0


def test_features_and_encoder_by_hand():
    from pipeline.baselines.features import CCAEncoder, Featurizer
    from pipeline.config import CCAConfig
    from pipeline.data.text.tokenizer import Tokenizer

    tok = Tokenizer(["[PAD]", "[UNK]", "a", "red", "circle"], max_tokens=8)
    f = Featurizer(CCAConfig(pixel_size=2), tok)
    np.testing.assert_allclose(f.text_raw(["A red, red zebra"]), [[1, 2, 0]] / np.sqrt(5))  # zebra: [UNK]
    px = np.zeros((1, 3, 8, 8), np.uint8)
    px[0, 0, :4, :4] = 255  # red channel, top-left quarter
    np.testing.assert_allclose(f.image_raw(px), [[1, 0, 0, 0] + [0] * 8])  # (channel, row, col) order
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    caps = [[" ".join(rng.choice(["a", "red", "circle"], 3))] for _ in range(40)]
    x, y = f.pairs(pixels, caps)
    enc = CCAEncoder(f, fit_linear_cca(CCAStats.of(x, y), k=3), power=4.0, image_size=8)
    img, txt = enc.encode_pixels(pixels), enc.encode_text(["a red circle", "circle"])
    assert img.shape == (40, 3) and txt.shape == (2, 3) and img.dtype == txt.dtype
    np.testing.assert_allclose(img.norm(dim=1).numpy(), 1, atol=1e-5)
