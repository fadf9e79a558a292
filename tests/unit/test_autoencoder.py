"""The bimodal autoencoder baseline (Ngiam et al.) without Ray: modality dropout, and what it is for: an
image-only code finds the caption-only code of its pair, which a model trained on both views at once cannot do."""
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.baselines.autoencoder import (AutoencoderEncoder, BimodalAutoencoder, Standardiser,
                                            modality_dropout, reconstruction_loss)


def _views(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy linear views (20-d, 15-d) of one 4-d latent per pair, the maps fixed across calls."""
    a = torch.randn(4, 20, generator=torch.Generator().manual_seed(100))
    b = torch.randn(4, 15, generator=torch.Generator().manual_seed(101))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    return z @ a + 0.3 * torch.randn(n, 20, generator=g), z @ b + 0.3 * torch.randn(n, 15, generator=g)


def _train(drop_modalities: bool, steps: int = 600) -> BimodalAutoencoder:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = _views(2000, 0)
    model = BimodalAutoencoder(20, 15, 64, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = reconstruction_loss(model, x[idx], y[idx], 0.1, g, drop_modalities)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _cross_modal_r1(model: BimodalAutoencoder) -> float:
    """Caption-only codes retrieving image-only codes among 200 held-out pairs (chance: 0.005)."""
    x, y = _views(200, 1)
    with torch.no_grad():
        images = F.normalize(model.encode(x, torch.zeros_like(y)), dim=1)
        captions = F.normalize(model.encode(torch.zeros_like(x), y), dim=1)
    return float(((captions @ images.T).argmax(1) == torch.arange(len(x))).float().mean())


def test_modality_dropout_keeps_a_view_in_every_row_and_drops_each_a_third_of_the_time():
    keep_x, keep_y = modality_dropout(30_000, torch.Generator().manual_seed(0))
    assert bool(((keep_x + keep_y) >= 1).all())
    for share in (float((keep_x * keep_y).mean()), float((1 - keep_x).mean()), float((1 - keep_y).mean())):
        assert abs(share - 1 / 3) < 0.02


def test_the_code_of_one_view_finds_its_pair_only_with_modality_dropout():
    with_dropout, without = _cross_modal_r1(_train(True)), _cross_modal_r1(_train(False))
    assert with_dropout > 0.6, with_dropout
    assert without < 0.2, without  # codes of a lone view, never seen in training, do not line up


def test_encoder_codes_are_unit_vectors_of_each_view_alone():
    class Raw:  # features are the inputs themselves
        def image(self, pixels):
            return np.asarray(pixels, dtype=np.float64).reshape(len(pixels), -1)

        def text(self, captions):
            return np.array([[float(len(c)), float(c.count("a"))] for c in captions])

    model = BimodalAutoencoder(12, 2, 8, 4)
    std_x, std_y = Standardiser(np.zeros(12), np.ones(12)), Standardiser(np.array([5.0, 1.0]), np.array([4.0, 0.0]))
    enc = AutoencoderEncoder(Raw(), model, std_x, std_y, image_size=2)
    img = enc.encode_pixels(np.random.default_rng(0).integers(0, 255, (3, 3, 2, 2), dtype=np.uint8))
    txt = enc.encode_text(["a cat", "banana"])
    assert img.shape == (3, 4) and txt.shape == (2, 4) and enc.embed_dim == 4
    assert torch.allclose(img.norm(dim=1), torch.ones(3)) and torch.allclose(txt.norm(dim=1), torch.ones(2))
    with torch.no_grad():  # "a cat": 5 characters, two a-s; its code is that of (no image, standardised caption)
        want = F.normalize(model.encode(torch.zeros(1, 12), torch.tensor([[(5.0 - 5) / 2, (2.0 - 1) / 1]])), dim=1)
    assert torch.allclose(txt[0:1], want, atol=1e-6)
    name, arrays = enc.saved()
    assert name == "autoencoder.npz" and arrays["std_y"].tolist() == [2.0, 1.0]  # a constant feature: std 1
