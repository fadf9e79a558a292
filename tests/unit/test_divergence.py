"""A diverged model stops the run with the step and the tower (not a NaN rsum that ranks as perfect), on one
process with a stand-in for the Ray Train worker context."""
import numpy as np
import pytest
import torch

from pipeline.config import TrainJobConfig, load_config
from pipeline.distributed import WorkerContext
from pipeline.losses import build_loss
from pipeline.models import build_model
from pipeline.training.objective import ContrastiveObjective
from pipeline.training.loop import train_epoch
from pipeline.training.optimisation import make_optimizer, make_scheduler

BASE = ["data.train=a", "data.val=b", "model.embed_dim=16", "model.image.width=8", "model.text.word_dim=16",
        "model.text.hidden=16", "train.batch_size=8", "scaling.num_workers=1", "train.log_every=2",
        "data.image_size=32"]


class FakeShard:
    def __init__(self, n_batches: int):
        g = np.random.default_rng(0)
        self.batches = [{"key": np.array([f"k{i}" for i in range(8)]),
                         "image": g.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8),
                         "tokens": g.integers(2, 30, (8, 6)).astype(np.int64)} for _ in range(n_batches)]

    def iter_batches(self, **_):
        yield from self.batches


class FakeContext(WorkerContext):
    def __init__(self, n_batches: int):
        super().__init__(0, 1, torch.device("cpu"))
        self.shard = FakeShard(n_batches)

    def dataset_shard(self, name):
        return self.shard


def _run_epoch(poison=None, n_batches: int = 5, poison_at: int = 1):
    cfg = load_config(TrainJobConfig, None, BASE)
    torch.manual_seed(0)
    objective = ContrastiveObjective(build_model(cfg.model, 30), build_loss(cfg.loss))
    opt = make_optimizer(objective, cfg.train)
    sched = make_scheduler(opt, 0, 100)
    if poison is not None:  # NaN weights from step `poison_at` on: what an exploding update leaves behind
        ctx = FakeContext(n_batches)
        batches = ctx.shard.batches

        def iter_batches(**_):
            for i, b in enumerate(batches, 1):
                if i == poison_at:
                    with torch.no_grad():
                        getattr(objective.model, poison).weight.fill_(float("nan"))
                yield b
        ctx.shard.iter_batches = iter_batches
    else:
        ctx = FakeContext(n_batches)
    records = []
    out = train_epoch(objective, opt, sched, ctx, cfg, epoch=1, step=0, steps_per_epoch=n_batches,
                      log=lambda r, p: records.append(r), batches=ctx.shard.iter_batches())
    return out, records


def test_a_healthy_epoch_runs_through():
    (step, loss, n), records = _run_epoch()
    assert step == 5 and n == 5 and np.isfinite(loss) and records


@pytest.mark.parametrize("poison, tower", [("image_proj", "image tower"), ("text_proj", "text tower")])
@pytest.mark.parametrize("poison_at", [1, 4])
def test_non_finite_embeddings_stop_the_run_naming_step_and_tower(poison, tower, poison_at):
    with pytest.raises(FloatingPointError, match=rf"{tower}'s embeddings became non-finite .* at step "
                                                 rf"{poison_at} \(epoch 1\)"):
        _run_epoch(poison, poison_at=poison_at)
