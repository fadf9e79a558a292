"""The on-disk checkpoint format, independent of Ray:

    <checkpoint>/model.pt        TwoTower state dict
    <checkpoint>/loss.pt         the loss's own parameters (e.g. the learned logit scale)
    <checkpoint>/optimizer.pt    optimizer + LR scheduler state (resuming only)
    <checkpoint>/tokenizer.json  the word-level vocabulary
    <checkpoint>/config.json     the resolved job config
    <checkpoint>/state.json      {"epoch": .., "step": .., "n_train": .., "metrics": {..}}

Checkpoints live in <run_dir>/checkpoints/epoch_NNNN/, on local disk or s3:// (read through `storage`).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from pipeline import storage
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


def is_checkpoint(path: str | Path) -> bool:
    """Complete: every required file there, and every file the manifest lists at its recorded size."""
    fs, root = storage.filesystem(str(path))
    try:
        sizes = {Path(e["name"]).name: e["size"] for e in fs.ls(root, detail=True) if e["type"] == "file"}
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not all(f in sizes for f in REQUIRED):
        return False
    try:
        files = json.loads(storage.read_text(storage.join(str(path), "state.json"))).get("files", {})
    except ValueError:
        return False
    return all(sizes.get(name) == size for name, size in files.items())


def find_latest(path: str | Path) -> str | None:
    """A checkpoint dir itself, or the newest complete epoch_* under a run dir or its checkpoints/ folder
    (local or s3://)."""
    path = str(path)
    if is_checkpoint(path):
        return path
    for base in (storage.join(path, "checkpoints"), path):
        found = [storage.join(base, d) for d in storage.list_dirs(base) if d.startswith("epoch_")]
        found = [p for p in found if is_checkpoint(p)]
        if found:
            return sorted(found)[-1]
    return None


def read_state(path: str | Path) -> dict:
    return json.loads(storage.read_text(storage.join(str(path), "state.json")))


def read_config(path: str | Path) -> dict:
    return json.loads(storage.read_text(storage.join(str(path), "config.json")))


def read_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_dict(json.loads(storage.read_text(storage.join(str(path), "tokenizer.json"))))


def _torch_load(path: str | Path, name: str):
    data = storage.read_bytes(storage.join(str(path), name))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_weights(path: str | Path, model, loss=None, optimizer=None, scheduler=None) -> None:
    """Weights (and optionally loss, optimizer and scheduler state) from a local or s3:// checkpoint."""
    model.load_state_dict(_torch_load(path, "model.pt"))
    if loss is not None and storage.exists(storage.join(str(path), "loss.pt")):
        loss.load_state_dict(_torch_load(path, "loss.pt"))
    if optimizer is not None:
        opt = _torch_load(path, "optimizer.pt")
        optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(opt["scheduler"])
