"""A crash while a checkpoint is written or copied never leaves one that loads wrong: it is either passed over
for the one before, or refused with an error that names the damaged file."""
import shutil
from pathlib import Path

import pytest
import torch

from pipeline import checkpoint
from pipeline.data.text.tokenizer import Tokenizer


def _write(path: Path, model: torch.nn.Module, epoch: int) -> None:
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.write_checkpoint(path, model=model, loss=torch.nn.Linear(1, 1), optimizer=opt, scheduler=sched,
                                tokenizer=Tokenizer(["[PAD]", "[UNK]", "a"], 4), config={"x": 1},
                                state={"epoch": epoch})


@pytest.fixture
def run_dir(tmp_path):
    """Two complete epochs written by `write_checkpoint`, with different weights."""
    torch.manual_seed(0)
    for epoch in (1, 2):
        _write(tmp_path / "checkpoints" / checkpoint.epoch_dir_name(epoch), torch.nn.Linear(64, 64), epoch)
    return tmp_path


def _copy_epoch(run_dir: Path, src: int, dst: int) -> Path:
    """A copy of a complete checkpoint under a newer name: what an upload that was then cut short started from."""
    out = run_dir / "checkpoints" / checkpoint.epoch_dir_name(dst)
    shutil.copytree(run_dir / "checkpoints" / checkpoint.epoch_dir_name(src), out)
    return out


def test_manifest_lists_size_and_hash_of_every_file(run_dir):
    state = checkpoint.read_state(run_dir / "checkpoints" / "epoch_0002")
    names = {"model.pt", "loss.pt", "optimizer.pt", "tokenizer.json", "config.json", "towers.json"}
    assert set(state["files"]) == names and set(state["sha256"]) == names
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_crash_while_writing_leaves_no_checkpoint(run_dir, monkeypatch):
    real_save = torch.save

    def crash_on_optimizer(obj, f):
        if isinstance(obj, dict) and "optimizer" in obj:
            f.write(b"half a file")
            raise KeyboardInterrupt  # the process dies mid-write
        return real_save(obj, f)

    monkeypatch.setattr(torch, "save", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        _write(run_dir / "checkpoints" / "epoch_0003", torch.nn.Linear(64, 64), 3)
    monkeypatch.undo()
    assert not (run_dir / "checkpoints" / "epoch_0003").exists()  # only a hidden partial folder
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert Path(checkpoint.find_latest(run_dir)).name == "epoch_0002"


@pytest.mark.parametrize("damage", ["truncate_model", "drop_manifest", "truncate_manifest", "drop_optimizer"])
def test_copy_cut_short_is_passed_over(run_dir, damage):
    bad = _copy_epoch(run_dir, 2, 3)
    if damage == "truncate_model":
        data = (bad / "model.pt").read_bytes()
        (bad / "model.pt").write_bytes(data[: len(data) // 2])
    elif damage == "drop_manifest":
        (bad / "state.json").unlink()
    elif damage == "truncate_manifest":
        (bad / "state.json").write_text((bad / "state.json").read_text()[:40])
    else:
        (bad / "optimizer.pt").unlink()
    assert not checkpoint.is_checkpoint(bad)
    assert Path(checkpoint.find_latest(run_dir)).name == "epoch_0002"


def test_right_size_wrong_bytes_is_refused_on_load_and_skipped_when_verified(run_dir):
    bad = _copy_epoch(run_dir, 1, 3)  # epoch 1's weights under a newer name, then one byte flipped
    data = bytearray((bad / "model.pt").read_bytes())
    data[-100] ^= 0xFF
    (bad / "model.pt").write_bytes(bytes(data))
    assert checkpoint.is_checkpoint(bad)  # sizes alone cannot tell
    assert not checkpoint.is_checkpoint(bad, verify=True)
    assert Path(checkpoint.find_latest(run_dir, verify=True)).name == "epoch_0002"
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.pt does not match the hash"):
        checkpoint.load_weights(bad, torch.nn.Linear(64, 64))


def test_rewriting_a_checkpoint_replaces_it_whole(run_dir):
    target = run_dir / "checkpoints" / "epoch_0002"
    model = torch.nn.Linear(64, 64)
    _write(target, model, 2)
    loaded = torch.nn.Linear(64, 64)
    checkpoint.load_weights(target, loaded)
    assert torch.equal(loaded.weight, model.weight)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]


def test_writing_into_an_empty_folder(tmp_path):
    """Ray's report path: the loop writes into a fresh temporary folder that already exists."""
    (tmp_path / "ckpt").mkdir()
    _write(tmp_path / "ckpt", torch.nn.Linear(2, 2), 1)
    assert checkpoint.is_checkpoint(tmp_path / "ckpt", verify=True)


def test_checkpoints_without_hashes_still_load(run_dir):
    """Checkpoints written before the manifest carried hashes load unchecked."""
    import json

    ck = run_dir / "checkpoints" / "epoch_0002"
    state = json.loads((ck / "state.json").read_text())
    state.pop("sha256")
    (ck / "state.json").write_text(json.dumps(state))
    assert checkpoint.is_checkpoint(ck, verify=True)
    checkpoint.load_weights(ck, torch.nn.Linear(64, 64))
