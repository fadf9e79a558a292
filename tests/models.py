"""A small OpenCLIP ViT initialised at random (seeded), saved and imported as a project checkpoint: nothing is
downloaded, and the OpenCLIP model itself stays at hand as the reference; and an index built with it in
process."""
from __future__ import annotations

import json
from pathlib import Path

NAME = "zs-tiny-vit"
CONFIG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def tiny_open_clip(tmp: Path, seed: int = 0):
    """-> (the OpenCLIP model in eval mode, the imported checkpoint's path)."""
    import open_clip
    import torch

    from pipeline.import_model import import_model

    (tmp / f"{NAME}.json").write_text(json.dumps(CONFIG))
    open_clip.add_model_config(str(tmp / f"{NAME}.json"))
    torch.manual_seed(seed)
    ref = open_clip.create_model(NAME).eval()
    torch.save(ref.state_dict(), tmp / "w.pt")
    import_model(str(tmp / "ckpt"), source=f"open_clip:{tmp / f'{NAME}.json'}", weights=str(tmp / "w.pt"))
    return ref, str(tmp / "ckpt")


def index_in_process(ckpt: str, shards: list[str], out: str, kind: str = "flat") -> str:
    """An index directory over `shards` with the model at `ckpt`, embedded and built in this process (no Ray),
    as `pipeline index` writes one. -> `out`"""
    from pipeline.index.embedding_passes import embed_to_parquet
    from pipeline.index.faiss_indexes import IndexSpec
    from pipeline.index.sharded import build_gallery_indexes, write_index

    emb = embed_to_parquet(ckpt, shards, 32, out, in_driver_images=1000, captionless=True)
    spec = IndexSpec(type=kind)
    write_index(out, build_gallery_indexes(out, spec), ckpt, spec, emb.n_images, emb.n_captions, emb.dim)
    return out


def photo_gallery(tmp: Path) -> tuple[str, list[str]]:
    """The tiny model's checkpoint and scikit-image's photo set as one tar shard, under `tmp`. -> (ckpt, shards)"""
    from pipeline.data.formats.photos import write_photo_shards

    (tmp / "model").mkdir()
    _, ckpt = tiny_open_clip(tmp / "model")
    return ckpt, write_photo_shards(str(tmp / "photos"))["shards"]
