"""Gallery embedding with Ray Data (an actor pool holding the model) and FAISS indexes over it.

    pipeline index --checkpoint runs/demo --data data/demo/val --out runs/demo/index

An index directory holds images.faiss + images.json (keys), captions.faiss + captions.json (text, image key)
and meta.json (checkpoint, dimension, index type, build time), so `pipeline search` needs nothing else.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np

from pipeline import storage
from pipeline.encoder import Encoder, Gallery, GalleryBuilder, load


class EmbedBatch:
    """Ray Data actor: loads the checkpoint once, then embeds batches of eval rows."""

    def __init__(self, checkpoint: str, device: str = "cpu", storage_options: dict | None = None):
        storage.configure(**(storage_options or {}))  # a checkpoint on s3:// is read from this process
        self.encoder = load(checkpoint, device)

    def __call__(self, batch: dict) -> dict:
        caps = [json.loads(c) for c in batch["captions"]]
        flat = [c for cs in caps for c in cs]
        txt = self.encoder.encode_text(flat).numpy()
        splits = np.cumsum([len(c) for c in caps])[:-1]
        return {"key": batch["key"], "captions": batch["captions"],
                "image_emb": self.encoder.encode_pixels(batch["image"]).numpy(),  # (n, D)
                "text_emb": np.array(np.split(txt, splits), dtype=object)}  # n x (k_i, D)


def embed_dataset(checkpoint: str, paths: list[str], image_size: int, num_actors: int = 1, use_gpu: bool = False,
                  batch_size: int = 256, counter=None) -> Gallery:
    """Embed every image and caption of the eval shards with a pool of model-holding actors."""
    from pipeline.data.ingest import eval_dataset

    ds = eval_dataset(paths, image_size, counter, split="gallery").map_batches(
        EmbedBatch, fn_constructor_kwargs={"checkpoint": checkpoint, "device": "cuda" if use_gpu else "cpu",
                                           "storage_options": storage.options()},
        batch_size=batch_size, batch_format="numpy", concurrency=num_actors, num_gpus=1 if use_gpu else 0)
    g = GalleryBuilder()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        g.img.append(batch["image_emb"])  # (n, D)
        lists = g.add_rows(batch["key"], batch["captions"])
        g.txt += [np.asarray(t, dtype=np.float32).reshape(len(caps), -1) for caps, t in zip(lists, batch["text_emb"])]
    return g.build()


def build_flat_index(vectors: np.ndarray) -> tuple[faiss.Index, float]:
    """Exact inner-product index (cosine on unit vectors) -> (index, build seconds)."""
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index, time.perf_counter() - t0


def measure_qps(index: faiss.Index, queries: np.ndarray, k: int = 10) -> float:
    t0 = time.perf_counter()
    index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return len(queries) / max(time.perf_counter() - t0, 1e-9)


def write_index(out: str | Path, gallery: Gallery, checkpoint: str) -> dict:
    """Build exact indexes over the gallery's images and captions and save them with their id maps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img_index, img_s = build_flat_index(gallery.image_emb.numpy())
    txt_index, txt_s = build_flat_index(gallery.text_emb.numpy())
    faiss.write_index(img_index, str(out / "images.faiss"))
    faiss.write_index(txt_index, str(out / "captions.faiss"))
    (out / "images.json").write_text(json.dumps(gallery.keys))
    owners = gallery.text_to_image.tolist()
    (out / "captions.json").write_text(json.dumps(
        [{"caption": c, "image": gallery.keys[o]} for c, o in zip(gallery.captions, owners)]))
    meta = {"type": "flat", "metric": "inner_product", "checkpoint": str(checkpoint),
            "dim": int(gallery.image_emb.shape[1]), "n_images": len(gallery.keys),
            "n_captions": len(gallery.captions), "build_s": img_s + txt_s,
            "qps": measure_qps(img_index, gallery.text_emb.numpy()), "recall@10_vs_exact": 1.0}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def search(index_dir: str | Path, text: str | None = None, image=None, k: int = 10,
           encoder: Encoder | None = None) -> list[dict]:
    """Text query -> top-k images; image query (a PIL image) -> top-k captions. -> [{rank, score, ...}]"""
    index_dir = Path(index_dir)
    if not (index_dir / "meta.json").is_file():
        raise FileNotFoundError(f"{index_dir} holds no index (meta.json missing); build one with `pipeline index`")
    meta = json.loads((index_dir / "meta.json").read_text())
    encoder = encoder or load(meta["checkpoint"])
    if (text is None) == (image is None):
        raise ValueError("give exactly one of text or image")
    if text is not None:
        index, ids = faiss.read_index(str(index_dir / "images.faiss")), json.loads((index_dir / "images.json").read_text())
        q = encoder.encode_text([text]).numpy()
    else:
        index = faiss.read_index(str(index_dir / "captions.faiss"))
        ids = json.loads((index_dir / "captions.json").read_text())
        q = encoder.encode_image([image]).numpy()
    scores, idx = index.search(q, min(k, index.ntotal))
    return [{"rank": r + 1, "score": float(s), **({"key": ids[i]} if text is not None else ids[i])}
            for r, (s, i) in enumerate(zip(scores[0], idx[0])) if i >= 0]
