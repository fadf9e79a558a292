"""Gallery embedding with Ray Data (an actor pool holding the model) and FAISS indexes over it.

    pipeline index --checkpoint runs/demo --data data/demo/val --out runs/demo/index

An index directory holds images.faiss + images.json (keys), captions.faiss + captions.json (text, image key)
and meta.json (checkpoint, dimension, index type, build time), so `pipeline search` needs nothing else.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.encoder import Encoder, Gallery, GalleryBuilder, load
from pipeline.indexes import IndexSpec, build_index, load_index, measure, save_index


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
        return {"key": batch["key"], "captions": batch["captions"], "label": batch["label"],
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
        lists = g.add_rows(batch["key"], batch["captions"], batch.get("label"))
        g.txt += [np.asarray(t, dtype=np.float32).reshape(len(caps), -1) for caps, t in zip(lists, batch["text_emb"])]
    return g.build()


def collect_thumbnails(paths: list[str], keys: list[str], side: int = 96) -> dict[str, str]:
    """key -> thumbnail data URI for the few gallery images a report shows: a Ray Data pass that keeps only
    those rows before decoding anything."""
    from pipeline.data.ingest import _read
    from pipeline.report_html import thumbnail

    wanted = set(keys)
    if not wanted:
        return {}
    out = {}
    for row in _read(paths).filter(lambda r: r["key"] in wanted).take_all():
        try:
            out[row["key"]] = thumbnail(row["image"], side)
        except (ValueError, OverflowError, TypeError):
            continue  # an image the gallery skipped: the report shows a placeholder
    return out


def held_out(queries: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Up to n query vectors of the other modality, drawn once, for recall and QPS measurements."""
    if len(queries) <= n:
        return queries
    return queries[np.sort(np.random.default_rng(seed).choice(len(queries), n, replace=False))]


def write_embeddings(out: Path, gallery: Gallery) -> None:
    """images.parquet (id, key, vector) and captions.parquet (id, key of its image, caption, vector)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def vectors(x: np.ndarray):
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])

    img, txt = gallery.image_emb.numpy(), gallery.text_emb.numpy()
    pq.write_table(pa.table({"id": np.arange(len(img)), "key": gallery.keys, "vector": vectors(img)}),
                   out / "images.parquet")
    owners = gallery.text_to_image.tolist()
    pq.write_table(pa.table({"id": np.arange(len(txt)), "key": [gallery.keys[o] for o in owners],
                             "caption": gallery.captions, "vector": vectors(txt)}), out / "captions.parquet")


def build_gallery_indexes(gallery: Gallery, spec: IndexSpec, names=("images", "captions")) -> dict:
    """name -> (index, info): the image index (text -> image search) and the caption index (image -> text),
    each measured against exact search on held-out queries of the other modality. Built once and shared by
    the saved index and the evaluation's approximate-search numbers."""
    img, txt = gallery.image_emb.numpy(), gallery.text_emb.numpy()
    built = {}
    for name, vectors, queries in (("images", img, txt), ("captions", txt, img)):
        if name in names:
            index, build_s = build_index(vectors, spec)
            built[name] = (index, {"type": spec.resolve(len(vectors)), "n": len(vectors), "build_s": build_s,
                                   **measure(index, vectors, held_out(queries), k=min(10, len(vectors)))})
    return built


def write_index(out: str | Path, gallery: Gallery, checkpoint: str, spec: IndexSpec | None = None,
                built: dict | None = None) -> dict:
    """Embeddings as Parquet and both indexes (`built` by build_gallery_indexes, or built here), saved with
    their id maps and metadata."""
    out, spec = Path(out), spec or IndexSpec()
    out.mkdir(parents=True, exist_ok=True)
    write_embeddings(out, gallery)
    img = gallery.image_emb.numpy()
    built = built or build_gallery_indexes(gallery, spec)
    per_index = {}
    for name, (index, info) in built.items():
        save_index(index, str(out / f"{name}.faiss"))
        per_index[name] = info
    (out / "images.json").write_text(json.dumps(gallery.keys))
    owners = gallery.text_to_image.tolist()
    (out / "captions.json").write_text(json.dumps(
        [{"caption": c, "image": gallery.keys[o]} for c, o in zip(gallery.captions, owners)]))
    main = per_index["images"]  # the contract's index block: text -> image search over the image gallery
    meta = {"type": main["type"], "metric": "inner_product", "checkpoint": str(checkpoint),
            "dim": int(img.shape[1]), "n_images": len(gallery.keys), "n_captions": len(gallery.captions),
            "build_s": main["build_s"], "qps": main["qps"],
            "recall@10_vs_exact": main.get("recall@10_vs_exact", 1.0), "spec": dataclasses.asdict(spec),
            "indexes": per_index}
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
    spec = IndexSpec(**meta["spec"]) if "spec" in meta else IndexSpec()
    if text is not None:
        index = load_index(str(index_dir / "images.faiss"), spec)
        ids = json.loads((index_dir / "images.json").read_text())
        q = encoder.encode_text([text]).numpy()
    else:
        index = load_index(str(index_dir / "captions.faiss"), spec)
        ids = json.loads((index_dir / "captions.json").read_text())
        q = encoder.encode_image([image]).numpy()
    scores, idx = index.search(q, min(k, index.ntotal))
    return [{"rank": r + 1, "score": float(s), **({"key": ids[i]} if text is not None else ids[i])}
            for r, (s, i) in enumerate(zip(scores[0], idx[0])) if i >= 0]
