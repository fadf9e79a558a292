"""The on-disk checkpoint format, independent of Ray:

    <checkpoint>/model.pt        TwoTower state dict
    <checkpoint>/loss.pt         the loss's own parameters (e.g. the learned logit scale)
    <checkpoint>/optimizer.pt    optimizer + LR scheduler state (resuming only)
    <checkpoint>/tokenizer.json  the tokenizer: word vocabulary, BPE or pretrained tokenizer ("kind")
    <checkpoint>/towers.json     what rebuilds timm:/hf:/open_clip: towers without their files, and the
                                 preprocessing (mean/std, size, interpolation) the image tower expects
    <checkpoint>/config.json     the resolved job config
    <checkpoint>/state.json      {"epoch": .., "step": .., "n_train": .., "metrics": {..}}

Checkpoints live in <run_dir>/checkpoints/epoch_NNNN/, on local disk or s3:// (read through `storage`).
state.json is written last and is the manifest: the size and SHA-256 of every other file. A copy cut short
(a crash during a write or an upload) fails the size check and is passed over; a file of the right size with
the wrong bytes fails the hash when it is loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import torch

from pipeline import storage
from pipeline.data.text.tokenizer import Tokenizer

REQUIRED = ("model.pt", "tokenizer.json", "config.json", "state.json")
HEAD = "rerank.pt"  # the fusion re-ranker's weights, in a checkpoint of a run with rerank.enabled


class CheckpointError(RuntimeError):
    """A checkpoint whose files do not match its manifest: cut short or corrupted."""


def epoch_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def step_dir_name(epoch: int, step: int) -> str:
    """A mid-epoch checkpoint of `epoch` at global step `step`: named after the epochs it completed, so that
    names sort in training order (epoch_0002 < epoch_0002_step_00000150 < epoch_0003)."""
    return f"{epoch_dir_name(epoch - 1)}_step_{step:08d}"


def _write_synced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _sha256(data_or_path: bytes | Path) -> str:
    h = hashlib.sha256()
    if isinstance(data_or_path, bytes):
        h.update(data_or_path)
        return h.hexdigest()
    with open(data_or_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(path: Path, *, model, loss, optimizer, scheduler, tokenizer: Tokenizer, config: dict,
                     state: dict, head=None, model_state: dict | None = None,
                     optimizer_state: dict | None = None) -> None:
    """Write the checkpoint at `path` atomically: the files go into a hidden sibling folder (fsynced, the
    manifest state.json last), then one rename puts the folder in place. A crash leaves only the hidden
    folder, which no reader looks at. `path` may be an empty folder (replaced) or an older checkpoint.
    `model_state`, `optimizer_state`: the whole states of a sharded model and its optimiser, gathered by the
    caller, in place of `model.state_dict()` and `optimizer.state_dict()`."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    blobs = {"model.pt": model.state_dict() if model_state is None else model_state, "loss.pt": loss.state_dict()}
    if head is not None:  # rerank.enabled: the fusion head trained with the towers (rerank.job.load reads it)
        blobs[HEAD] = head.state_dict()
    if optimizer is not None:  # an imported model has no optimiser state; it cannot be resumed, only started from
        blobs["optimizer.pt"] = {"optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
                                 "scheduler": scheduler.state_dict()}
    for name, obj in blobs.items():
        _write_synced(tmp / name, lambda f, obj=obj: torch.save(obj, f))
    texts = {"tokenizer.json": json.dumps(tokenizer.to_dict()), "config.json": json.dumps(config, indent=2),
             "towers.json": json.dumps(getattr(model, "spec", {}) or {}, indent=2)}
    for name, text in texts.items():
        _write_synced(tmp / name, lambda f, text=text: f.write(text.encode()))
    names = sorted(p.name for p in tmp.iterdir())
    manifest = {"files": {n: (tmp / n).stat().st_size for n in names},
                "sha256": {n: _sha256(tmp / n) for n in names}}
    _write_synced(tmp / "state.json", lambda f: f.write(json.dumps({**state, **manifest}, indent=2).encode()))
    _replace_dir(tmp, path)


def _replace_dir(src: Path, dst: Path) -> None:
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        if any(dst.iterdir()):
            os.rename(dst, old)
        else:
            dst.rmdir()
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    try:  # make the rename itself durable
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _manifest(path: str | Path) -> dict:
    return json.loads(storage.read_text(storage.join(str(path), "state.json")))


def is_checkpoint(path: str | Path, verify: bool = False) -> bool:
    """Complete: every required file there, and every file the manifest lists at its recorded size; with
    `verify`, also at its recorded SHA-256 (this reads every file)."""
    return not checkpoint_problem(path, verify)


def checkpoint_problem(path: str | Path, verify: bool = False) -> str:
    """'' for a complete checkpoint (see `is_checkpoint`), else what is wrong with it, in a few words."""
    fs, root = storage.filesystem(str(path))
    try:
        sizes = {Path(e["name"]).name: e["size"] for e in fs.ls(root, detail=True) if e["type"] == "file"}
    except (FileNotFoundError, NotADirectoryError):
        return "no such folder"
    missing = [f for f in REQUIRED if f not in sizes]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        manifest = _manifest(path)
    except ValueError:
        return "state.json unreadable"
    short = [n for n, size in manifest.get("files", {}).items() if sizes.get(n) != size]
    if short:
        return f"{', '.join(short)} not at the size state.json records"
    if verify:
        bad = [n for n, digest in manifest.get("sha256", {}).items()
               if _sha256(storage.read_bytes(storage.join(str(path), n))) != digest]
        if bad:
            return f"{', '.join(bad)} not matching the hash state.json records"
    return ""


def find_latest(path: str | Path, verify: bool = False, passed_over: list | None = None) -> str | None:
    """A checkpoint dir itself, or the newest complete epoch_* under a run dir or its checkpoints/ folder
    (local or s3://). `verify`: complete down to every file's hash, so a damaged newest checkpoint is passed
    over for the one before it (reads the files of each candidate it checks); `passed_over` is given each
    (checkpoint, what is wrong with it) that was."""
    path = str(path)
    if is_checkpoint(path, verify):
        return path
    for base in (storage.join(path, "checkpoints"), path):
        found = sorted(storage.join(base, d) for d in storage.list_dirs(base) if d.startswith("epoch_"))
        for p in reversed(found):
            problem = checkpoint_problem(p, verify)
            if not problem:
                return p
            if passed_over is not None:
                passed_over.append((p, problem))
    return None


def read_state(path: str | Path) -> dict:
    return json.loads(storage.read_text(storage.join(str(path), "state.json")))


def read_config(path: str | Path) -> dict:
    return json.loads(_read_verified(path, "config.json"))


def read_tokenizer(path: str | Path):
    """-> the checkpoint's tokenizer: the word Tokenizer, or a subword one (`pipeline.data.text.subword`)."""
    from pipeline.data.text.subword import tokenizer_from_dict

    return tokenizer_from_dict(json.loads(_read_verified(path, "tokenizer.json")))


def read_spec(path: str | Path) -> dict:
    """towers.json, or {} for a checkpoint written before it existed (its towers need no spec)."""
    if not storage.exists(storage.join(str(path), "towers.json")):
        return {}
    return json.loads(_read_verified(path, "towers.json"))


def _read_verified(path: str | Path, name: str) -> bytes:
    """A file's bytes, after checking them against the manifest's hash: every file the manifest lists, not only
    the weights (a reordered tokenizer.json changes every embedding; an edited config.json rebuilds another
    model). Checkpoints written before the manifest had hashes are read unchecked."""
    data = storage.read_bytes(storage.join(str(path), name))
    expected = _manifest(path).get("sha256", {}).get(name)
    if expected is not None and _sha256(data) != expected:
        raise CheckpointError(f"{storage.join(str(path), name)} does not match the hash in its state.json: "
                              "the checkpoint was cut short, corrupted or edited; restore the file or use another "
                              "checkpoint (a resumed run passes over a damaged one by itself)")
    return data


def _torch_load(path: str | Path, name: str):
    """A file's tensors (hash-checked first): weights only, no pickled code."""
    return torch.load(io.BytesIO(_read_verified(path, name)), map_location="cpu", weights_only=True)


def load_weights(path: str | Path, model, loss=None, optimizer=None, scheduler=None, head=None) -> None:
    """Weights (and optionally loss, optimizer, scheduler and re-ranker head state) from a local or s3://
    checkpoint."""
    model.load_state_dict(_torch_load(path, "model.pt"))
    if head is not None:
        head.load_state_dict(_torch_load(path, HEAD))
    if loss is not None and storage.exists(storage.join(str(path), "loss.pt")):
        loss.load_state_dict(_torch_load(path, "loss.pt"))
    if optimizer is not None:
        opt = _torch_load(path, "optimizer.pt")
        optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(opt["scheduler"])


def load_head(path: str | Path) -> dict:
    """The re-ranker head's state dict from a checkpoint of a run with rerank.enabled."""
    return _torch_load(path, HEAD)


# Keys that shape the model or what it is fed: a resume whose config differs in one of them would train the
# next epochs of a different model on top of the old one's weights (or fail deep inside load_state_dict).
SHAPING = ("model.", "loss.", "data.image_size", "data.max_tokens", "data.vocab_min_count", "data.vocab_max_size",
           "data.tokenizer", "train.batch_size", "rerank.enabled", "rerank.fusion", "rerank.dim", "rerank.hidden",
           "rerank.rank", "rerank.sketch_dim")
# model. keys that change how a step runs, not the model it trains: a resume may turn them on or off (say, to fit
# memory) with no allow_config_change.
NOT_SHAPING = ("model.image.grad_checkpointing", "model.text.grad_checkpointing", "model.image.patch_dropout")


def config_changes(saved: dict, new: dict) -> list[str]:
    """['data.image_size: 64 -> 96', ...]: the shaping keys whose values differ between a checkpoint's config
    and the config resuming it (keys only one side has are left out: an older checkpoint lacks newer keys)."""
    from pipeline.config import flatten

    old, cur = flatten(saved), flatten(new)
    return [f"{k}: {json.dumps(old[k])} -> {json.dumps(cur[k])}" for k in sorted(set(old) & set(cur))
            if k.startswith(SHAPING) and k not in NOT_SHAPING and old[k] != cur[k]]


def load_model(ckpt: str | Path):
    """A checkpoint dir -> (its model with the trained weights, its tokenizer, its config dict). The files the
    model started from (image weights, word vectors) need not exist here: model.pt holds the trained weights."""
    from pipeline.config.loading import build
    from pipeline.config.model_sections import ModelConfig
    from pipeline.models import build_model

    cfg = read_config(ckpt)
    tokenizer = read_tokenizer(ckpt)
    model = build_model(build(ModelConfig, cfg["model"]), len(tokenizer), image_size=cfg["data"]["image_size"],
                        max_tokens=tokenizer.max_tokens, load_files=False, spec=read_spec(ckpt))
    load_weights(ckpt, model)
    return model, tokenizer, cfg


def check_loadable(path: str | Path) -> None:
    """On the driver, before any Ray work: every file the manifest lists matches its hash, and the weights load
    into the model its config describes. -> CheckpointError in one line otherwise (instead of a state-dict
    traceback from inside an embedding actor)."""
    import pickle

    for name in sorted(_manifest(path).get("sha256", {})):
        _read_verified(path, name)
    try:
        ckpt = find_latest(path)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint under {path}; expected model.pt, tokenizer.json, config.json")
        load_model(ckpt)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: model.pt holds pickled objects, not only tensors; refusing to load it "
                              "(re-save the weights with torch.save(model.state_dict()))") from None
    except (RuntimeError, KeyError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: the weights do not fit the model its config.json describes ({first[:200]})"
                              ) from None


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def set_aside_damaged_ray_snapshot(run_dir: str) -> str | None:
    """Ray Train keeps its own list of reported checkpoints in <run_dir>/checkpoints/<RAY_SNAPSHOT>. A disk that
    filled up mid-write leaves it empty, and deleting a damaged checkpoint leaves it naming a folder that is
    gone; either way Ray refuses to start the run again. The project resumes from its own newest complete
    checkpoint (find_latest) and never needs Ray's list, so a damaged one is renamed out of the way.
    -> why it was set aside, or None when it is fine (or absent)."""
    path = storage.join(run_dir, "checkpoints", RAY_SNAPSHOT)
    if not storage.exists(path):
        return None
    data = storage.read_bytes(path)
    try:
        snap = json.loads(data)
        names = [r["checkpoint_dir_name"] for r in snap.get("checkpoint_results", [])]
        latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (ValueError, TypeError, KeyError, AttributeError):
        why = "it is empty or not valid JSON"
    else:
        gone = [n for n in names + ([latest] if latest else []) if not storage.exists(storage.join(run_dir,
                                                                                               "checkpoints", n))]
        if not gone and (latest is None or latest in names):
            return None
        why = f"it names {gone[0] if gone else latest}, which is not there"
    storage.write_bytes(path + ".damaged", data)
    fs, inner = storage.filesystem(path)
    fs.rm(inner)
    return why
