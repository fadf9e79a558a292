"""Queries against a built index directory: the query encoder, the FAISS indexes and the hits' keys, captions
and paths, loaded once and searched in batches. `pipeline search` asks it one query; `pipeline serve` keeps one
per replica and hands it the queries that queued together, as one batch.

    searcher = Searcher.open("runs/demo/index")
    searcher.text(["a red square"], k=5)   # -> [[{rank, score, key, caption, path?}, ...]]
    searcher.images([pil_image], k=5)      # -> [[{rank, score, key, caption, image}, ...]]

A text query finds images (`caption`: the image's first caption in the gallery); an image query finds captions
(`key` and `image`: the caption's image). With a re-ranker the top max(k, rerank_k) are re-ordered by it, each
hit carrying its `rerank_score`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import storage
from pipeline.data.formats.lookup import ImageLookup
from pipeline.index.embedding_passes import CAPTIONS, IMAGES, parquet_columns, read_columns, vectors_of
from pipeline.index.sharded import RayShardedIndex, index_checkpoint, load_gallery_index

if TYPE_CHECKING:
    from pipeline.encoder import Encoder


def read_meta(index_dir: str) -> dict:
    """meta.json of an index directory, refused in one line when there is none."""
    path = storage.join(index_dir, "meta.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{index_dir} holds no index (meta.json missing); build one with `pipeline index`")
    return json.loads(storage.read_text(path))


@dataclass
class _Side:
    """What one direction searches: its FAISS index and, per id, what a hit shows."""
    index: object
    rows: list[dict]  # per id: {key, caption, path?}
    vectors: np.ndarray | None = None  # (n, D), kept only for the re-ranker


@dataclass
class Searcher:
    index_dir: str
    meta: dict
    encoder: Encoder
    reranker: object | None = None  # (fusion head, meta) from `rerank.job.load`
    rerank_k: int = 20
    distributed: bool = False
    _sides: dict[str, _Side] = field(default_factory=dict)
    _lookup: ImageLookup | None = None
    _captions: tuple[list[str], list[str]] | None = None

    @classmethod
    def open(cls, index_dir: str | Path, encoder: Encoder | None = None, checkpoint: str | None = None,
             **kw) -> Searcher:
        """The index at `index_dir`, queried with `encoder`, or the model at `checkpoint` (default: the one the
        index was built with). A model whose embedding size is not the index's is refused."""
        index_dir = str(index_dir)
        meta = read_meta(index_dir)
        if encoder is None:  # imported here: the index's shard tasks and actors never load torch
            from pipeline.encoder import load

            encoder = load(checkpoint or index_checkpoint(index_dir, meta))
        if encoder.embed_dim != meta["dim"]:
            raise ValueError(f"the model embeds into {encoder.embed_dim} dimensions but the index {index_dir} holds "
                             f"{meta['dim']}-dimensional vectors: give the checkpoint it was built with")
        return cls(index_dir, meta, encoder, **kw)

    @property
    def sizes(self) -> dict[str, int]:
        return {"images": int(self.meta["n_images"]), "captions": int(self.meta["n_captions"])}

    def text(self, queries: list[str], k: int | list[int] = 10, rerank: bool | list[bool] = True
             ) -> list[list[dict]]:
        """Captions -> for each, its top-k images, best first. k, rerank: one for all, or one per query."""
        return self._search("images", self.encoder.encode_text(list(queries)).numpy(), k, rerank)

    def images(self, queries: list, k: int | list[int] = 10, rerank: bool | list[bool] = True
               ) -> list[list[dict]]:
        """PIL images -> for each, its top-k captions, best first. k, rerank: one for all, or one per query."""
        return self._search("captions", self.encoder.encode_image(list(queries)).numpy(), k, rerank)

    def gallery_images(self) -> ImageLookup:
        """Where each gallery image is stored (its file, else its shard), read from images.parquet once."""
        if self._lookup is None:
            directory = storage.join(self.index_dir, IMAGES)
            has_path = "path" in parquet_columns(directory)
            table = read_columns(directory, ["key", "shard"] + (["path"] if has_path else []))
            paths = table.column("path").to_pylist() if has_path else [""] * table.num_rows
            self._lookup = ImageLookup(dict(zip(table.column("key").to_pylist(),
                                                zip(table.column("shard").to_pylist(), [p or "" for p in paths]))))
        return self._lookup

    def side(self, name: str) -> _Side:
        """The index and hit rows of `name` (images | captions), loaded on first use."""
        if name not in self._sides:
            self._sides[name] = self._load(name)
        return self._sides[name]

    def _load(self, name: str) -> _Side:
        sharded = bool(self.meta.get("indexes", {}).get(name, {}).get("shards"))
        index = RayShardedIndex(self.index_dir, name, self.meta) if self.distributed and sharded else \
            load_gallery_index(self.index_dir, name, self.meta)
        want = ["vector"] if self.reranker is not None else []
        if name == "images":
            cols = ["key"] + (["path"] if "path" in parquet_columns(storage.join(self.index_dir, IMAGES)) else [])
            table = read_columns(storage.join(self.index_dir, IMAGES), cols + want)
            first: dict[str, str] = {}  # image key -> its first caption (an image's captions are together, in order)
            for key, caption in zip(*self._caption_rows()):
                first.setdefault(key, caption)
            rows = []
            for r in table.select(cols).to_pylist():
                rows.append({"key": r["key"], "caption": first.get(r["key"], "")})
                if r.get("path"):  # the image's own file or URL (an index written before it was kept has none)
                    rows[-1]["path"] = r["path"]
        else:
            rows = [{"key": key, "caption": caption, "image": key} for key, caption in zip(*self._caption_rows())]
            table = read_columns(storage.join(self.index_dir, CAPTIONS), want) if want else None
        return _Side(index, rows, vectors_of(table) if want else None)

    def _caption_rows(self) -> tuple[list[str], list[str]]:
        """(image key, caption) of every caption in id order, read once: both sides show captions."""
        if self._captions is None:
            table = read_columns(storage.join(self.index_dir, CAPTIONS), ["key", "caption"])
            self._captions = (table.column("key").to_pylist(), table.column("caption").to_pylist())
        return self._captions

    def _search(self, name: str, q: np.ndarray, k, rerank) -> list[list[dict]]:
        """Queries sharing a candidate count share one FAISS search: a batch answers each query as it alone
        would be answered (an approximate index may order a longer list differently)."""
        side = self.side(name)
        ks = list(k) if isinstance(k, (list, tuple)) else [k] * len(q)
        reranks = [bool(r) and self.reranker is not None
                   for r in (rerank if isinstance(rerank, (list, tuple)) else [rerank] * len(q))]
        wanted = [min(max(ki, self.rerank_k) if ri else ki, side.index.ntotal) for ki, ri in zip(ks, reranks)]
        out: list[list[dict]] = [[] for _ in range(len(q))]
        for n in sorted(set(wanted)):
            group = [i for i, w in enumerate(wanted) if w == n]
            if n < 1:
                continue
            scores, ids = side.index.search(np.ascontiguousarray(q[group], dtype=np.float32), n)
            for row, qi in enumerate(group):
                found = [(float(s), int(i)) for s, i in zip(scores[row], ids[row]) if i >= 0]
                hits = [{"score": s, **side.rows[i]} for s, i in found]
                if reranks[qi] and hits:
                    hits = self._rerank(name, q[qi], side.vectors[[i for _, i in found]], hits)
                out[qi] = [{"rank": r + 1, **h} for r, h in enumerate(hits[:ks[qi]])]
        return out

    def _rerank(self, name: str, query: np.ndarray, cand: np.ndarray, hits: list[dict]) -> list[dict]:
        import torch

        c, qv = torch.from_numpy(cand), torch.from_numpy(query[None]).expand(len(hits), -1)  # (n, D)
        with torch.no_grad():
            head = self.reranker[0](qv, c) if name == "captions" else self.reranker[0](c, qv)  # (n,) image first
        return [{**hits[i], "rerank_score": float(head[i])} for i in head.argsort(descending=True, stable=True)]


def search(index_dir: str | Path, text: str | None = None, image=None, k: int = 10, **kw) -> list[dict]:
    """One query: text -> top-k images, or an image (PIL) -> top-k captions. `kw`: Searcher.open's."""
    if (text is None) == (image is None):
        raise ValueError("give exactly one of text or image")
    searcher = Searcher.open(index_dir, **kw)
    return searcher.text([text], k)[0] if text is not None else searcher.images([image], k)[0]
