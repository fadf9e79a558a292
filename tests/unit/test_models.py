import pytest
import torch

from pipeline.config import ModelConfig, TextTowerConfig, build
from pipeline.models import build_model


@pytest.mark.parametrize("image_arch,text_arch,size", [("small_cnn", "gru", 32), ("small_cnn", "bow", 64),
                                                       ("resnet18", "gru", 32)])
def test_shapes_and_unit_norm(image_arch, text_arch, size):
    cfg = build(ModelConfig, {"embed_dim": 16, "image": {"arch": image_arch, "width": 8},
                              "text": {"arch": text_arch, "word_dim": 8, "hidden": 8}})
    model = build_model(cfg, vocab_size=20).eval()
    img = torch.randint(0, 255, (3, 3, size, size), dtype=torch.uint8)
    tok = torch.tensor([[2, 3, 4, 0], [5, 0, 0, 0], [1, 1, 1, 1]])
    ie, te = model(img, tok)
    assert ie.shape == (3, 16) and te.shape == (3, 16)
    assert torch.allclose(ie.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(te.norm(dim=1), torch.ones(3), atol=1e-5)


def test_padding_does_not_change_text_embedding():
    cfg = build(ModelConfig, {"embed_dim": 8, "text": {"arch": "gru", "word_dim": 8, "hidden": 8}})
    model = build_model(cfg, vocab_size=10).eval()
    a = model.encode_text(torch.tensor([[2, 3, 4, 0, 0, 0]]))
    b = model.encode_text(torch.tensor([[2, 3, 4, 0]]))
    assert torch.allclose(a, b, atol=1e-6)


def test_bow_ignores_word_order_gru_does_not():
    tok = torch.tensor([[2, 3, 4, 5], [4, 5, 2, 3]])  # "red circle blue square" vs "blue square red circle"
    for arch, same in (("bow", True), ("gru", False)):
        cfg = build(ModelConfig, {"embed_dim": 8, "text": build(TextTowerConfig, {"arch": arch}).__dict__})
        emb = build_model(cfg, vocab_size=10).eval().encode_text(tok)
        assert torch.allclose(emb[0], emb[1], atol=1e-6) is same


def test_resnet_weights_from_missing_file_is_a_clear_error():
    cfg = build(ModelConfig, {"image": {"arch": "resnet18", "weights": "/no/file.pth"}})
    with pytest.raises(FileNotFoundError, match="model.image.weights"):
        build_model(cfg, vocab_size=10)
