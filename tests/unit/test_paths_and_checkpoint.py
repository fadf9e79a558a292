from pathlib import Path
import pytest
import torch

from pipeline import checkpoint
from pipeline.config import ConfigError
from pipeline.data.ingest import expand_braces, expand_paths
from pipeline.data.text.tokenizer import Tokenizer


def test_expand_braces():
    assert expand_braces("s/{00..02}.tar") == ["s/00.tar", "s/01.tar", "s/02.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]


def test_expand_paths_forms(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.tar").write_bytes(b"")
    assert len(expand_paths(str(tmp_path))) == 4  # directory: every .tar below
    assert len(expand_paths(f"{tmp_path}/*.tar")) == 3
    assert len(expand_paths(f"{tmp_path}/{{00000..00001}}.tar")) == 2
    assert len(expand_paths(f"{tmp_path}/00000.tar,{tmp_path}/sub/x.tar")) == 2
    with pytest.raises(ConfigError, match="does not exist"):
        expand_paths(f"{tmp_path}/nope.tar", "data.train")
    with pytest.raises(ConfigError, match="matches no shard"):
        expand_paths(f"{tmp_path}/*.parquet", "data.train")


def test_checkpoint_roundtrip_and_latest(tmp_path):
    model, loss = torch.nn.Linear(3, 2), torch.nn.Linear(1, 1)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    tok = Tokenizer(["[PAD]", "[UNK]", "a"], 4)
    for epoch in (1, 2):
        checkpoint.write_checkpoint(tmp_path / "checkpoints" / checkpoint.epoch_dir_name(epoch), model=model,
                                    loss=loss, optimizer=opt, scheduler=sched, tokenizer=tok, config={"x": 1},
                                    state={"epoch": epoch})
    (tmp_path / "checkpoints" / "epoch_0003").mkdir()  # incomplete: no state.json
    latest = checkpoint.find_latest(tmp_path)
    assert Path(latest).name == "epoch_0002" and checkpoint.read_state(latest)["epoch"] == 2
    other = torch.nn.Linear(3, 2)
    checkpoint.load_weights(latest, other, optimizer=torch.optim.AdamW(other.parameters()))
    assert torch.equal(other.weight, model.weight)
    assert checkpoint.find_latest(tmp_path / "empty") is None


def test_references_inside_a_run_are_relative_and_survive_a_move(tmp_path):
    from pipeline import storage

    run = tmp_path / "runs" / "demo"
    ckpt, index = run / "checkpoints" / "epoch_0003", run / "index"
    ckpt.mkdir(parents=True)
    (tmp_path / "zoo" / "pair").mkdir(parents=True)
    assert storage.relative_ref("kernel CCA (nystrom, 256)", str(index)) == "kernel CCA (nystrom, 256)"  # a label
    ref = storage.relative_ref(str(ckpt), str(index))
    assert ref == "../checkpoints/epoch_0003"
    moved = tmp_path / "elsewhere" / "demo"
    assert storage.resolve_ref(ref, str(moved / "index")) == str(moved / "checkpoints" / "epoch_0003")
    outside = tmp_path / "zoo" / "pair"  # an imported pair outside the run: named absolutely
    assert storage.relative_ref(str(outside), str(index)) == str(outside)
    assert storage.resolve_ref(str(outside), str(moved / "index")) == str(outside)
    assert storage.relative_ref("s3://b/runs/demo/checkpoints/e1", "s3://b/runs/demo/index") == "../checkpoints/e1"
    assert storage.resolve_ref("../checkpoints/e1", "s3://b/moved/demo/index") == "s3://b/moved/demo/checkpoints/e1"
    assert storage.relative_ref("s3://b/zoo/pair", "s3://b/runs/demo/index") == "s3://b/zoo/pair"
    assert storage.relative_ref("s3://b/runs/demo/c", str(index)) == "s3://b/runs/demo/c"
