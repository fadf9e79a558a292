import math

import pytest
import torch

from pipeline.losses import InfoNCE, build_loss


def naive_infonce(img, txt, scale):
    """Explicit loops over rows: -log softmax of the matching pair, both directions."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(img[i] @ txt[j]) for j in range(n)]
        col = [scale * float(txt[i] @ img[j]) for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def _emb(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = lambda: torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)  # noqa
    return f(), f()


def test_infonce_matches_naive_loop():
    img, txt = _emb()
    loss = InfoNCE(temperature=0.1).double()
    scale = float(loss.scale())
    assert scale == pytest.approx(10.0, rel=1e-6)
    assert float(loss(img, txt).detach()) == pytest.approx(naive_infonce(img, txt, scale), rel=1e-9)


def test_local_rows_against_global_columns_average_to_full_loss():
    img, txt = _emb(8)
    loss = InfoNCE(temperature=0.2).double()
    full = loss(img, txt)
    parts = [loss(img[s:s + 2], txt[s:s + 2], image_all=img, text_all=txt, offset=s) for s in range(0, 8, 2)]
    assert float(sum(parts).detach() / 4) == pytest.approx(float(full.detach()), rel=1e-12)


def test_logit_scale_clamped_and_fixed_when_not_learned():
    loss = InfoNCE(temperature=0.001)
    assert float(loss.scale()) == 100.0
    assert not InfoNCE(learn_temperature=False).logit_scale.requires_grad
    assert float(InfoNCE().logit_scale) == pytest.approx(math.log(1 / 0.07))


def test_build_loss_errors():
    with pytest.raises(ValueError, match="choose one of"):
        build_loss("nope")
    with pytest.raises(ValueError, match="takes no parameter 'margin'"):
        build_loss("infonce", margin=0.2)
    assert isinstance(build_loss("infonce", temperature=0.05), InfoNCE)
