"""The on-disk checkpoint format, independent of Ray:

    <checkpoint>/model.pt        TwoTower state dict
    <checkpoint>/loss.pt         the loss's own parameters (e.g. the learned logit scale)
    <checkpoint>/optimizer.pt    optimizer + LR scheduler state (resuming only)
    <checkpoint>/tokenizer.json  the word-level vocabulary
    <checkpoint>/config.json     the resolved job config
    <checkpoint>/state.json      {"epoch": .., "step": .., "n_train": .., "metrics": {..}}

Checkpoints live in <run_dir>/checkpoints/epoch_NNNN/.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.data.tokenizer import Tokenizer

REQUIRED = ("model.pt", "tokenizer.json", "config.json", "state.json")


def epoch_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def write_checkpoint(path: Path, *, model, loss, optimizer, scheduler, tokenizer: Tokenizer, config: dict,
                     state: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "model.pt")
    torch.save(loss.state_dict(), path / "loss.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / "optimizer.pt")
    tokenizer.save(path / "tokenizer.json")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    # state.json last, with the size of every other file: a copy cut short (a crash during upload) shows up
    # as a size mismatch and is passed over when looking for the checkpoint to resume from.
    files = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file() and p.name != "state.json"}
    (path / "state.json").write_text(json.dumps({**state, "files": files}, indent=2))


def is_checkpoint(path: Path) -> bool:
    """Complete: every required file there, and every file the manifest lists at its recorded size."""
    if not all((path / f).is_file() for f in REQUIRED):
        return False
    try:
        files = json.loads((path / "state.json").read_text()).get("files", {})
    except ValueError:
        return False
    return all((path / name).is_file() and (path / name).stat().st_size == size for name, size in files.items())


def find_latest(path: str | Path) -> Path | None:
    """A checkpoint dir itself, or the newest complete epoch_* under a run dir or its checkpoints/ folder."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    for base in (path / "checkpoints", path):
        found = sorted(p for p in base.glob("epoch_*") if is_checkpoint(p)) if base.is_dir() else []
        if found:
            return found[-1]
    return None


def read_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def read_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.load(path / "tokenizer.json")


def load_weights(path: Path, model, loss=None, optimizer=None, scheduler=None) -> None:
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    if loss is not None and (path / "loss.pt").is_file():
        loss.load_state_dict(torch.load(path / "loss.pt", map_location="cpu", weights_only=True))
    if optimizer is not None:
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(opt["scheduler"])
