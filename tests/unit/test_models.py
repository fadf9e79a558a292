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
        cfg = build(ModelConfig, {"embed_dim": 8, "text": dataclasses.asdict(build(TextTowerConfig, {"arch": arch}))})
        emb = build_model(cfg, vocab_size=10).eval().encode_text(tok)
        assert torch.allclose(emb[0], emb[1], atol=1e-6) is same


def test_resnet_weights_from_missing_file_is_a_clear_error():
    cfg = build(ModelConfig, {"image": {"arch": "resnet18", "weights": "/no/file.pth"}})
    with pytest.raises(FileNotFoundError, match="model.image.weights"):
        build_model(cfg, vocab_size=10)


# ---------------------------------------------------------------- every tower, padding, word vectors, freezing

import dataclasses  # noqa: E402
import gzip  # noqa: E402

from pipeline.config import ConfigError, TrainJobConfig, load_config, to_dict  # noqa: E402
from pipeline.models.text import POOLINGS, build_text_tower  # noqa: E402
from pipeline.models.word_vectors import load_word_vectors  # noqa: E402

TEXT = {"word_dim": 8, "hidden": 8, "heads": 2}


@pytest.mark.parametrize("image_arch", ["small_cnn", "resnet18", "resnet50", "vit_b_16", "convnext_tiny"])
def test_every_image_tower_gives_embed_dim(image_arch):
    cfg = build(ModelConfig, {"embed_dim": 16, "image": {"arch": image_arch, "width": 8},
                              "text": {"arch": "bow", "word_dim": 8}})
    model = build_model(cfg, vocab_size=10, image_size=64).eval()
    with torch.no_grad():
        emb = model.encode_image(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


TEXT_CASES = [(arch, pooling) for arch, poolings in POOLINGS.items() for pooling in poolings]


@pytest.mark.parametrize("arch,pooling", TEXT_CASES)
def test_text_towers_ignore_padding(arch, pooling):
    cfg = build(TextTowerConfig, {"arch": arch, "pooling": pooling, **TEXT})
    torch.manual_seed(0)
    tower = build_text_tower(cfg, vocab_size=20, max_tokens=16).eval()
    # captions of 4, 1 and 6 words (the 1-word one is shorter than every cnn window but the first)
    tok = torch.tensor([[2, 3, 4, 5, 0, 0], [6, 0, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12]])  # (3, 6)
    with torch.no_grad():
        out = tower(tok)
        padded = tower(torch.nn.functional.pad(tok, (0, 7)))  # (3, 13)
        alone = torch.cat([tower(tok[i:i + 1, :n]) for i, n in enumerate([4, 1, 6])])  # unpadded, one by one
    assert out.shape == (3, tower.out_dim)
    assert torch.allclose(out, padded, atol=1e-5) and torch.allclose(out, alone, atol=1e-5)


def test_gru_default_keeps_its_parameter_names():
    """Checkpoints trained before the other towers existed still load."""
    model = build_model(build(ModelConfig, {}), vocab_size=10)
    text_keys = sorted(k for k in model.state_dict() if k.startswith("text_tower."))
    assert text_keys == sorted(["text_tower.embed.weight"] + [f"text_tower.rnn.{w}_l0{s}" for w in (
        "weight_ih", "weight_hh", "bias_ih", "bias_hh") for s in ("", "_reverse")])
    assert model.text_tower.out_dim == 512 and model.text_tower.pooling == "mean"


def test_transformer_rejects_captions_longer_than_its_positions():
    tower = build_text_tower(build(TextTowerConfig, {"arch": "transformer", **TEXT}), 10, max_tokens=4)
    with pytest.raises(ValueError, match="positions for 4"):
        tower(torch.ones(1, 5, dtype=torch.long))


VOCAB = ["[PAD]", "[UNK]", "red", "circle", "blue", "square", "triangle"]
GLOVE = "red 1 2 3\nBlue 7 8 9\ncircle 4 5 6\nblue 0.5 0.5 0.5\nthe 9 9 9\n"
WORD2VEC = "4 3\nred 1 2 3\nSquare 3 3 3\ncircle 4 5 6 \ndog 1 1 1\n"


def test_glove_file_rows_and_coverage(tmp_path):
    (tmp_path / "g.txt").write_text(GLOVE)
    vectors, found, cov = load_word_vectors(str(tmp_path / "g.txt"), VOCAB, dim=3)
    assert found.tolist() == [False, False, True, True, True, False, False]
    assert vectors[2].tolist() == [1, 2, 3] and vectors[3].tolist() == [4, 5, 6]
    assert vectors[4].tolist() == [0.5, 0.5, 0.5]  # the exact spelling wins over 'Blue'
    assert cov["vocab_words"] == 5 and cov["found"] == 3 and cov["fraction"] == 0.6 and cov["case_folded"] == 0
    assert cov["dim"] == 3 and cov["file_words"] == 5
    (tmp_path / "g.txt.gz").write_bytes(gzip.compress(GLOVE.encode()))
    assert load_word_vectors(str(tmp_path / "g.txt.gz"), VOCAB)[2]["found"] == 3


def test_word2vec_text_file_with_header(tmp_path):
    (tmp_path / "w.txt").write_text(WORD2VEC)
    vectors, found, cov = load_word_vectors(str(tmp_path / "w.txt"), VOCAB)
    assert found.tolist() == [False, False, True, True, False, True, False]
    assert vectors[5].tolist() == [3, 3, 3]  # 'Square', matched case-folded
    assert (cov["found"], cov["case_folded"], cov["file_words"], cov["fraction"]) == (3, 1, 4, 0.6)


def _vector_model_cfg(path, freeze=False, arch="gru", **image):
    return build(ModelConfig, {"embed_dim": 4, "image": {"arch": "small_cnn", "width": 4, **image},
                               "text": {"arch": arch, "word_dim": 3, "hidden": 4,
                                        "embeddings": {"path": str(path), "freeze": freeze}}})


def test_model_starts_from_the_file_and_reports_coverage(tmp_path):
    (tmp_path / "g.txt").write_text(GLOVE)
    model = build_model(_vector_model_cfg(tmp_path / "g.txt"), len(VOCAB), vocab=VOCAB)
    weight = model.text_tower.embed.weight
    assert weight[2].tolist() == [1, 2, 3] and weight[4].tolist() == [0.5, 0.5, 0.5]
    assert weight[0].abs().sum() == 0 and weight[5].abs().sum() > 0  # padding zero; 'square' random
    assert model.word_coverage["found"] == 3 and model.word_coverage["fraction"] == 0.6
    assert build_model(build(ModelConfig, {}), 10).word_coverage is None


def test_wrong_dimension_and_missing_file_are_clear_errors(tmp_path):
    (tmp_path / "g.txt").write_text(GLOVE)
    bad_dim = build(ModelConfig, {"text": {"word_dim": 8, "embeddings": {"path": str(tmp_path / "g.txt")}}})
    with pytest.raises(ValueError, match=r"3-d vectors but model.text.word_dim=8; set model.text.word_dim=3"):
        build_model(bad_dim, len(VOCAB), vocab=VOCAB)
    with pytest.raises(FileNotFoundError, match="model.text.embeddings.path"):
        build_model(_vector_model_cfg(tmp_path / "no.txt"), len(VOCAB), vocab=VOCAB)
    base = ["data.train=a", "data.val=b", f"model.text.embeddings.path={tmp_path}/g.txt"]
    with pytest.raises(ConfigError, match="set model.text.word_dim=3"):
        load_config(TrainJobConfig, None, base)
    with pytest.raises(ConfigError, match="model.text.embeddings.path=.*does not exist"):
        load_config(TrainJobConfig, None, base[:2] + [f"model.text.embeddings.path={tmp_path}/no.txt"])
    assert load_config(TrainJobConfig, None, base + ["model.text.word_dim=3"]).model.text.word_dim == 3


@pytest.mark.parametrize("override,match", [
    ("model.text.pooling=cls", "does not apply to model.text.arch=gru"),
    ("model.image.arch=vit_b_16", "multiple of 16"),  # with data.image_size=72 below
    ("model.text.cnn_widths=[0]", "positive integers"),
])
def test_bad_tower_settings_fail_in_the_config(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainJobConfig, None, ["data.train=a", "data.val=b", "data.image_size=72", override])


def _one_step(model, images, tokens):
    from pipeline.training.optimisation import make_optimizer

    opt = make_optimizer(model, build(TrainJobConfig, {"data": {"train": "a", "val": "b"}}).train)
    model.train()
    img, txt = model(images, tokens)
    loss = -(img * txt).sum() + (img @ txt.T).logsumexp(1).sum()  # any loss that moves every part
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_frozen_image_tower_keeps_weights_and_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    model = build_model(build(ModelConfig, {"embed_dim": 4, "image": {"arch": "small_cnn", "width": 4,
                                                                      "freeze": True},
                                            "text": {"arch": "bow", "word_dim": 4}}), vocab_size=10)
    tower = {k: v.clone() for k, v in model.image_tower.state_dict().items()}  # weights + running stats
    proj, text = model.image_proj.weight.clone(), model.text_tower.embed.weight.clone()
    _one_step(model, torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.randint(1, 10, (4, 5)))
    assert model.training and not model.image_tower.training
    assert all(not m.training for m in model.image_tower.modules())
    assert all(torch.equal(v, model.image_tower.state_dict()[k]) for k, v in tower.items())
    assert all(p.grad is None for p in model.image_tower.parameters())
    assert not torch.equal(proj, model.image_proj.weight) and not torch.equal(text, model.text_tower.embed.weight)


def test_frozen_word_vectors_stay_while_the_rest_trains(tmp_path):
    (tmp_path / "g.txt").write_text(GLOVE)
    torch.manual_seed(0)
    model = build_model(_vector_model_cfg(tmp_path / "g.txt", freeze=True), len(VOCAB), vocab=VOCAB)
    embed, rnn = model.text_tower.embed.weight.clone(), model.text_tower.rnn.weight_ih_l0.clone()
    _one_step(model, torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8),
              torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0], [2, 2, 1, 0], [4, 3, 2, 6]]))
    assert torch.equal(embed, model.text_tower.embed.weight)
    assert not torch.equal(rnn, model.text_tower.rnn.weight_ih_l0)


def test_checkpoint_loads_without_the_word_vector_file(tmp_path):
    from pipeline import checkpoint
    from pipeline.data.text.tokenizer import Tokenizer
    from pipeline.encoder import load

    vec = tmp_path / "g.txt"
    vec.write_text(GLOVE)
    cfg = load_config(TrainJobConfig, None, ["data.train=a", "data.val=b", "model.embed_dim=4",
                                             "model.image.width=4", "model.text.word_dim=3", "model.text.hidden=4",
                                             f"model.text.embeddings.path={vec}"])
    model = build_model(cfg.model, len(VOCAB), vocab=VOCAB, image_size=cfg.data.image_size)
    opt = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)
    checkpoint.write_checkpoint(tmp_path / "ckpt", model=model, loss=torch.nn.Linear(1, 1), optimizer=opt,
                                scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                                tokenizer=Tokenizer(VOCAB, 8), config=to_dict(cfg), state={"epoch": 1})
    vec.unlink()
    enc = load(tmp_path / "ckpt")
    assert all(torch.equal(v, enc.model.state_dict()[k]) for k, v in model.state_dict().items())
    assert enc.model.text_tower.embed.weight[2].tolist() == [1, 2, 3]
    assert enc.encode_text(["a red circle"]).shape == (1, 4)
