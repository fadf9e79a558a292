"""A global batch of 4096 on 2 CPU workers trains with gradient caching in bounded memory (and, with
eval.untrained=false, starts without validating the untrained model), its JPEGs decoded on the workers
(data.decode=gpu, on their CPU here): 2048 views a step cut into one batch of tensors."""
import json

from pipeline.cli import main
from pipeline.data.formats.synthetic import write_dataset

from .conftest import smoke_args


def test_global_batch_4096_with_gradient_caching(ray_cluster, tmp_path, capsys):
    data = tmp_path / "data"
    write_dataset(data, 4096, 64, seed=5)
    args = smoke_args(data, tmp_path, "big", "--set", "train.batch_size=4096", "--set", "train.micro_batch_size=256",
                      "--set", "train.epochs=1", "--set", "train.log_every=1", "--set", "train.warmup_steps=0",
                      "--set", "eval.untrained=false", "--set", "data.decode=gpu")
    assert main(["train", *args]) == 0
    assert "decoded on each worker's device (data.decode=gpu)" in capsys.readouterr().out
    state = json.loads((tmp_path / "big" / "checkpoints" / "epoch_0001" / "state.json").read_text())
    assert state["step"] == 1 and state["n_train"] == 4096
    assert [h["epoch"] for h in state["history"]] == [1]  # no epoch 0: the untrained model was not validated
    steps = [json.loads(line) for line in (tmp_path / "big" / "metrics.jsonl").read_text().splitlines()]
    # One worker held 2048 samples; activations were kept for 256 at a time.
    assert steps and all(s["train/peak_mem_mb"] < 3000 for s in steps), steps
