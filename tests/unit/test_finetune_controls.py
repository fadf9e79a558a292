"""Fine-tuning controls (frozen towers, per-tower learning rates, warm starts) and the one-line errors of
pretrained configs, checked against the plain facts they promise."""
import os

import pytest
import torch

from pipeline.config import ConfigError, ModelConfig, TrainJobConfig, build
from pipeline.models import build_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = {"embed_dim": 8, "image": {"arch": "small_cnn", "width": 4}, "text": {"arch": "gru", "word_dim": 8,
                                                                            "hidden": 8}}


def _job(**sections) -> TrainJobConfig:
    return build(TrainJobConfig, {"data": {"train": "a", "val": "b", **sections.pop("data", {})}, **sections})


def test_frozen_text_tower_takes_no_gradient_and_stays_in_eval_mode():
    model = build_model(build(ModelConfig, {**TINY, "text": {**TINY["text"], "freeze": True}}), 10)
    model.train()
    assert not model.text_tower.training and model.image_tower.training
    img, txt = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), torch.tensor([[2, 3], [4, 0]]))
    (img * txt).sum().backward()
    assert all(p.grad is None for p in model.text_tower.parameters())
    assert model.text_proj.weight.grad is not None and model.image_proj.weight.grad is not None


def test_each_tower_gets_its_learning_rate_multiplier():
    from pipeline.training.optimisation import make_optimizer

    cfg = build(ModelConfig, {**TINY, "image": {**TINY["image"], "lr_mult": 0.1}, "text": {**TINY["text"],
                                                                                        "lr_mult": 0.5}})
    model = build_model(cfg, 10)
    train = _job().train
    opt = make_optimizer(model, train, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(0.1 * train.lr) for p in model.image_tower.parameters())
    assert all(lr_of[id(p)] == pytest.approx(0.5 * train.lr) for p in model.text_tower.parameters())
    assert lr_of[id(model.image_proj.weight)] == pytest.approx(train.lr)
    assert len(lr_of) == sum(1 for p in model.parameters() if p.requires_grad)  # every parameter, once


@pytest.mark.parametrize("change, message", [
    ({"data": {"tokenizer": "pretrained"}}, "needs a text tower with a tokenizer of its own"),
    ({"model": {"arch": "open_clip:RN50"}}, "set data.tokenizer=pretrained"),
    ({"model": {"text": {"arch": "hf:/no/such/folder"}}}, "no such folder"),
    ({"model": {"weights": "x.bin"}}, "model.weights is the weights of model.arch"),
    ({"model": {"image": {"arch": "timm:"}}}, "timm:<timm model name>"),
    ({"data": {"tokenizer": "bpe"}, "model": {"text": {"word_dim": 2, "embeddings": {"path": "GLOVE"}}}},
     "needs data.tokenizer=word"),
])
def test_pretrained_config_mistakes_are_one_line_errors(change, message, tmp_path):
    glove = tmp_path / "g.txt"
    glove.write_text("red 0.1 0.2\n")
    if "embeddings" in change.get("model", {}).get("text", {}):
        change["model"]["text"]["embeddings"]["path"] = str(glove)
    with pytest.raises(ConfigError, match=message):
        _job(**change)


def test_an_hf_folder_without_a_tokenizer_is_refused_for_the_pretrained_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        _job(data={"tokenizer": "pretrained"}, model={"text": {"arch": f"hf:{tmp_path}"}})


def test_bpe_from_word_counts_encodes_the_captions_it_was_trained_on():
    from collections import Counter

    from pipeline.data.text.tokenizer import count_words
    from pipeline.data.text.vocabulary import bpe_corpus, make_tokenizer

    captions = ["a red circle left of a blue square", "a small green triangle above a large red square"] * 50
    data = _job(data={"tokenizer": "bpe", "vocab_max_size": 300, "max_tokens": 16}).data
    tok = make_tokenizer(data, None, count_words(captions))
    ids = tok.encode_batch(captions[:2])
    assert ids.shape == (2, 16) and (ids[:, 0] != 0).all()
    assert tok.decode(ids[0]).strip() == captions[0]  # byte-level: lossless on these
    # counts are scaled, not truncated: the corpus for the trainer keeps the words' proportions
    lines = bpe_corpus(Counter({"a": 4000, "b": 1000}), budget=500)
    assert sum(line.count("a") for line in lines) == 400 and sum(line.count("b") for line in lines) == 100


def test_an_open_clip_model_refuses_an_image_size_it_cannot_take():
    with pytest.raises(ValueError, match="takes 224 px images: set data.image_size=224"):
        build_model(build(ModelConfig, {"arch": "open_clip:RN50", "embed_dim": 8}), 49408, image_size=63)


def test_a_tokenizer_larger_than_the_text_towers_embedding_table_is_refused():
    pytest.importorskip("transformers")
    from pipeline.bundled import minilm_path

    cfg = build(ModelConfig, {"text": {"arch": f"hf:{minilm_path()}"}})
    with torch.device("meta"), pytest.raises(ValueError, match="embedding table has 30522 rows"):
        build_model(cfg, 40000, max_tokens=16, load_files=False)


def test_warm_start_takes_the_checkpoints_model_and_keeps_its_own_fine_tuning_choices(tmp_path):
    from pipeline import checkpoint
    from pipeline.training import warm_start
    from pipeline.config import to_dict
    from pipeline.data.text.tokenizer import Tokenizer
    from pipeline.losses import build_loss

    src = _job(model={**TINY, "embed_dim": 12}, data={"image_size": 32, "max_tokens": 8})
    model, loss = build_model(src.model, 5, image_size=32, max_tokens=8), build_loss(src.loss)
    with torch.no_grad():
        loss.logit_scale.fill_(4.0)
    tok = Tokenizer(["[PAD]", "[UNK]", "a", "b", "c"], 8)
    checkpoint.write_checkpoint(tmp_path / "ck", model=model, loss=loss, optimizer=None, scheduler=None,
                                tokenizer=tok, config=to_dict(src), state={"epoch": 3, "step": 9})
    run = _job(model={"init_from": str(tmp_path / "ck"), "image": {"freeze": True, "lr_mult": 0.3}},
               loss={"name": "infonce"})
    resolved, init = warm_start.resolve(run)
    assert init == str(tmp_path / "ck")
    assert resolved.model.embed_dim == 12 and resolved.model.image.width == 4  # the checkpoint's architecture
    assert resolved.model.image.freeze and resolved.model.image.lr_mult == 0.3  # the run's own choices
    assert resolved.data.image_size == 32 and resolved.data.max_tokens == 8 and resolved.data.tokenizer == "word"
    fresh, fresh_loss = build_model(resolved.model, 5, image_size=32, max_tokens=8), build_loss(resolved.loss)
    warm_start.start_model(fresh, fresh_loss, init)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert float(fresh_loss.logit_scale.detach()) == 4.0  # same loss: its learned scale comes along
    vse = build_loss("vse++")
    warm_start.start_model(build_model(resolved.model, 5, image_size=32, max_tokens=8), vse, init)  # no scale
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        warm_start.resolve(_job(model={"init_from": str(tmp_path / "nothing")}))


def test_local_model_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """Ray workers do not run in the driver's directory: a relative weights path must be made absolute."""
    from pipeline.training import warm_start

    (tmp_path / "w.pth").write_bytes(b"")
    (tmp_path / "g.txt").write_text("red 0.1 0.2\n")
    monkeypatch.chdir(tmp_path)
    job = _job(model={"image": {"weights": "w.pth"}, "text": {"word_dim": 2, "embeddings": {"path": "g.txt"}}})
    resolved, _ = warm_start.resolve(job)
    assert resolved.model.image.weights == str(tmp_path / "w.pth")
    assert resolved.model.text.embeddings.path == str(tmp_path / "g.txt")
