"""GPU speed settings (train.precision, train.channels_last, train.compile): CPU runs keep full precision and
the default memory format unless asked; bf16 autocast changes the towers' arithmetic, not the interface."""
import pytest
import torch

from pipeline.config import ConfigError, TrainJobConfig, load_config
from pipeline.losses import build_loss
from pipeline.models import build_model
from pipeline.training.objective import ContrastiveObjective
from pipeline.training.optimisation import speed_up, train_step

BASE = ["data.train=a", "data.val=b", "model.embed_dim=16", "model.image.width=8", "model.text.word_dim=16",
        "model.text.hidden=16"]


def _cfg(*extra: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, BASE + list(extra))


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    tokens = torch.randint(2, 30, (n, 6), generator=g)
    tokens[:, 4:] = 0  # padding
    return images, tokens


def _objective(cfg: TrainJobConfig) -> ContrastiveObjective:
    torch.manual_seed(0)
    return ContrastiveObjective(build_model(cfg.model, 30), build_loss(cfg.loss))


@pytest.mark.parametrize("precision,device,expected", [
    ("auto", "cpu", None), ("auto", "cuda", "bfloat16"), ("fp32", "cuda", None), ("bf16", "cpu", "bfloat16"),
])
def test_autocast_dtype(precision, device, expected):
    assert _cfg(f"train.precision={precision}").train.autocast_dtype(device) == expected


def test_bad_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="train.precision='fp16'; use auto, fp32 or bf16"):
        _cfg("train.precision=fp16")


def test_defaults_leave_a_cpu_run_alone():
    cfg = _cfg()
    obj = speed_up(_objective(cfg), cfg.train, torch.device("cpu"))
    assert obj.autocast_dtype is None
    conv = next(m for m in obj.model.image_tower.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # channels_last is for GPUs only


def test_bf16_towers_give_fp32_embeddings_close_to_fp32():
    cfg = _cfg("train.precision=bf16")
    images, tokens = _batch()
    full = _objective(cfg).eval()
    mixed = speed_up(_objective(cfg), cfg.train, torch.device("cpu")).eval()
    assert mixed.autocast_dtype is torch.bfloat16
    with torch.no_grad():
        (i32, t32), (i16, t16) = full.embed(images, tokens), mixed.embed(images, tokens)
    assert i16.dtype == torch.float32 and t16.dtype == torch.float32  # the all-gather and loss stay fp32
    assert torch.nn.functional.cosine_similarity(i16, i32).min() > 0.98
    assert torch.nn.functional.cosine_similarity(t16, t32).min() > 0.98


def test_train_step_under_bf16_updates_every_trained_parameter():
    cfg = _cfg("train.precision=bf16")
    obj = speed_up(_objective(cfg), cfg.train, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in obj.named_parameters()}
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    images, tokens = _batch()
    loss = train_step(obj, opt, sched, {"image": images, "tokens": tokens}, 0, cfg.train)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    moved = [n for n, p in obj.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)
