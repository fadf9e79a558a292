"""model.image/text.grad_checkpointing and model.image.patch_dropout: gradients (float64) and BatchNorm statistics
equal to the run without checkpointing, for every kind of tower with blocks, while the activations kept for
backward shrink; patch dropout as OpenCLIP's and timm's own, and never in evaluation."""
import copy
import json

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, ModelConfig, build
from pipeline.models import build_model, memory


def _torchvision_vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
                             dropout=0.1)


def _torchvision_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 2)], stochastic_depth_prob=0.2)


def _hf_bert():
    from transformers import BertConfig, BertModel

    from pipeline.models.pretrained import HFTextTower

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)
    return HFTextTower(BertModel(cfg, add_pooling_layer=False), "mean", 0)


def _open_clip(side: str):
    import open_clip

    from tests.models import CONFIG

    model = open_clip.CustomTextCLIP(**CONFIG)
    return model.visual if side == "image" else model.text


def _project(section: dict, side: str):
    cfg = build(ModelConfig, section)
    model = build_model(cfg, vocab_size=30, image_size=32, max_tokens=8)
    return model.image_tower if side == "image" else model.text_tower


IMAGE = torch.rand(3, 3, 32, 32, dtype=torch.float64)
TOKENS = torch.tensor([[2, 3, 4, 5, 0, 0], [6, 7, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13]])
TOWERS = {  # name -> (build, kind, input)
    "small_cnn": (lambda: _project({"image": {"arch": "small_cnn", "width": 8}}, "image"), "small_cnn", IMAGE),
    "resnet18": (lambda: _project({"image": {"arch": "resnet18"}}, "image"), "resnet18", IMAGE),
    "torchvision vit": (_torchvision_vit, "vit_b_16", IMAGE),
    "torchvision convnext": (_torchvision_convnext, "convnext_tiny", IMAGE),
    "timm vit": (lambda: __import__("timm").create_model("test_vit", num_classes=0, img_size=32), "timm", IMAGE),
    "timm efficientnet": (lambda: __import__("timm").create_model("test_efficientnet", num_classes=0), "timm", IMAGE),
    "open_clip vit": (lambda: _open_clip("image"), "open_clip", IMAGE),
    "open_clip text": (lambda: _open_clip("text"), "open_clip", torch.randint(1, 49408, (3, 77))),
    "hf bert": (_hf_bert, "hf", TOKENS),
    "transformer": (lambda: _project({"text": {"arch": "transformer", "hidden": 32, "word_dim": 16, "layers": 3}},
                                     "text"), "transformer", TOKENS),
}


def _step(tower: nn.Module, x: torch.Tensor) -> tuple[dict, dict, int]:
    """One training forward and backward from a fixed RNG state. -> (gradients, buffers, bytes kept for backward)"""
    kept = [0]

    def pack(t):
        kept[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = tower(x)
    out = out[0] if isinstance(out, tuple) else out
    (out.double() ** 2).sum().backward()
    grads = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    return grads, {n: b.clone() for n, b in tower.named_buffers()}, kept[0]


def _pair(name: str, train: bool):
    """-> (the tower in float64, the same weights with checkpointing on, its input)"""
    make, kind, x = TOWERS[name]
    torch.manual_seed(0)
    plain = make().double().train(train)
    checked = copy.deepcopy(plain)
    memory.enable_grad_checkpointing(checked, kind, "model.image.grad_checkpointing")
    return plain, checked, x


@pytest.mark.parametrize("name", list(TOWERS))
def test_checkpointed_gradients_equal_the_plain_ones_and_less_is_kept(name):
    plain, checked, x = _pair(name, train=True)
    g0, b0, kept0 = _step(plain, x)
    g1, b1, kept1 = _step(checked, x)
    assert g0.keys() == g1.keys() and g0
    worst = max((g0[k] - g1[k]).abs().max().item() for k in g0)
    assert worst <= 1e-10, (name, worst)
    if name != "timm efficientnet":  # timm's own checkpointing folds a batch into BatchNorm twice: its behaviour
        for k in b0:
            assert torch.equal(b0[k], b1[k]), (name, k)
    assert kept1 < 0.7 * kept0, (name, kept1, kept0)
    assert set(checked.state_dict()) == set(plain.state_dict())  # checkpoints load either way


@pytest.mark.parametrize("name", ["torchvision vit", "small_cnn", "transformer"])
def test_checkpointing_is_off_in_eval_mode(name):
    """Validation and evaluation (eval mode, gradients or not) keep what the tower without checkpointing keeps."""
    plain, checked, x = _pair(name, train=False)
    (_, _, kept0), (_, _, kept1) = _step(plain, x), _step(checked, x)
    assert kept1 == kept0 > 0


@pytest.mark.parametrize("section,needle", [
    ({"text": {"arch": "gru", "grad_checkpointing": True}}, "model.text.grad_checkpointing=true: model.text.arch=gru"),
    ({"text": {"arch": "bow", "grad_checkpointing": True}}, "model.text.grad_checkpointing=true: model.text.arch=bow"),
    ({"image": {"arch": "small_cnn", "patch_dropout": 0.5}},
     "model.image.patch_dropout=0.5: model.image.arch=small_cnn"),
    ({"image": {"arch": "resnet18", "patch_dropout": 0.3}}, "model.image.arch=resnet18 has no patch tokens"),
    ({"image": {"arch": "vit_b_16", "patch_dropout": 1.0}}, "model.image.patch_dropout=1.0 must be in [0, 1)"),
])
def test_options_that_do_not_apply_are_refused_naming_the_key(section, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        build(ModelConfig, section)


def test_a_timm_tower_without_patch_tokens_is_refused_when_built():
    cfg = build(ModelConfig, {"image": {"arch": "timm:test_efficientnet", "patch_dropout": 0.5}})
    with pytest.raises(ValueError, match=r"model.image.patch_dropout=0.5: timm's EfficientNet has no patch tokens"):
        build_model(cfg, vocab_size=10, image_size=32)


def test_patch_dropout_is_the_libraries_own_and_keeps_the_class_token():
    from open_clip.transformer import PatchDropout as OpenCLIPPatchDropout
    from timm.layers import PatchDropout as TimmPatchDropout

    timm_vit = TOWERS["timm vit"][0]()
    memory.set_patch_dropout(timm_vit, "timm", 0.5)
    assert isinstance(timm_vit.patch_drop, TimmPatchDropout) and timm_vit.patch_drop.prob == 0.5
    visual = _open_clip("image")
    memory.set_patch_dropout(visual, "open_clip", 0.25)
    assert isinstance(visual.patch_dropout, OpenCLIPPatchDropout) and visual.patch_dropout.prob == 0.25

    # The torchvision ViT's: the same tokens as OpenCLIP's from the same random draw (in their order), the class
    # token first; 8 of 16 patches reach the encoder.
    x = torch.randn(4, 17, 6)
    ours, ref = memory.PatchDropout(0.5).train(), OpenCLIPPatchDropout(0.5).train()
    torch.manual_seed(3)
    a = ours(x)
    torch.manual_seed(3)
    b = ref(x)
    assert a.shape == b.shape == (4, 9, 6) and torch.equal(a[:, 0], x[:, 0])
    for i in range(4):
        assert sorted(map(tuple, a[i].tolist())) == sorted(map(tuple, b[i].tolist()))
    vit = _torchvision_vit().train()
    memory.set_patch_dropout(vit, "vit_b_16", 0.5)
    seen = []
    vit.encoder.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    vit(torch.rand(2, 3, 32, 32))
    vit.eval()(torch.rand(2, 3, 32, 32))
    assert seen == [1 + 8, 1 + 16]


@pytest.mark.parametrize("arch,image_size", [("vit_b_16", 32), ("timm:test_vit", 160)])
def test_embeddings_do_not_depend_on_patch_dropout(tmp_path, arch, image_size):
    """The same weights saved under configs with and without patch dropout embed alike through pipeline.load
    (what evaluation, indexing and serving use)."""
    import pipeline
    from pipeline import checkpoint
    from pipeline.data.text.tokenizer import Tokenizer, count_words

    tok = Tokenizer.from_counts(count_words(["a red circle", "a blue square"]), max_tokens=8)
    images = torch.randint(0, 255, (3, 3, image_size, image_size), dtype=torch.uint8)
    out = {}
    for p in (0.0, 0.6):
        config = {"model": {"embed_dim": 8, "image": {"arch": arch, "patch_dropout": p},
                            "text": {"arch": "bow", "word_dim": 8}}, "data": {"image_size": image_size}}
        cfg = build(ModelConfig, config["model"])
        torch.manual_seed(0)
        model = build_model(cfg, len(tok), image_size=image_size, max_tokens=8)
        checkpoint.write_checkpoint(tmp_path / str(p), model=model, loss=nn.Module(), optimizer=None, scheduler=None,
                                    tokenizer=tok, config=config, state={"epoch": 1, "step": 1})
        enc = pipeline.load(tmp_path / str(p))
        assert json.loads((tmp_path / str(p) / "config.json").read_text())["model"]["image"]["patch_dropout"] == p
        out[p] = enc.encode_pixels(images)
    assert torch.equal(out[0.0], out[0.6])
