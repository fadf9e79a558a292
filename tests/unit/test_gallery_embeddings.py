"""The embeddings' Parquet layout: vector columns, dense ids, joining the two passes, sampling, shard plans."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.index import embedding_passes as embed
from pipeline.index.sharded import shard_pieces


def write_pass(directory, parts):
    """parts: one dict of columns per file, as the Ray Data write tasks leave them (no id yet)."""
    directory.mkdir(parents=True)
    for n, cols in enumerate(parts):
        table = pa.table({k: (embed.vector_column(v) if k == "vector" else v) for k, v in cols.items()})
        pq.write_table(table, directory / f"part-{n:03d}.parquet")
    counts = embed.row_counts(embed.parquet_files(str(directory)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for f, s in zip(embed.parquet_files(str(directory)), starts):
        embed._number_file(f, int(s), {})


def test_vector_column_round_trip():
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert np.array_equal(embed.vectors_of(pa.table({"vector": embed.vector_column(x)})), x)


def test_ids_are_dense_in_file_order_and_numbering_again_changes_nothing(tmp_path):
    v = np.eye(4, dtype=np.float32)
    write_pass(tmp_path / "images.parquet", [{"key": ["a", "b"], "vector": v[:2]}, {"key": ["c"], "vector": v[2:3]}])
    files = embed.parquet_files(str(tmp_path / "images.parquet"))
    assert [pq.read_table(f).column("id").to_pylist() for f in files] == [[0, 1], [2]]
    embed._number_file(files[1], 2, {})  # idempotent: an existing id column is replaced, not doubled
    assert pq.read_table(files[1]).column_names == ["id", "key", "vector"]
    assert np.array_equal(embed.read_vectors(str(tmp_path / "images.parquet")), v[:3])


def test_read_gallery_joins_the_passes_and_drops_captions_of_skipped_images(tmp_path):
    v = np.eye(6, dtype=np.float32)
    write_pass(tmp_path / embed.IMAGES, [{"key": ["b", "a"], "label": ["", ""], "shard": ["s0", "s0"],
                                          "vector": v[:2]}])
    # "z" was skipped by the image pass (say, a corrupt image): the caption pass still saw its caption
    write_pass(tmp_path / embed.CAPTIONS, [{"key": ["a", "z"], "caption": ["a1", "z1"], "vector": v[2:4]},
                                           {"key": ["b", "a"], "caption": ["b1", "a2"], "vector": v[4:6]}])
    g, dropped = embed.read_gallery(str(tmp_path))
    assert dropped == 1 and g.keys == ["b", "a"] and g.captions == ["a1", "b1", "a2"]
    assert g.text_to_image.tolist() == [1, 0, 1]
    assert torch.equal(g.text_emb, torch.from_numpy(v[[2, 4, 5]])) and g.labels is None


def test_sample_vectors_draws_distinct_rows_across_files(tmp_path):
    v = np.arange(40, dtype=np.float32).reshape(20, 2)
    write_pass(tmp_path / "c", [{"key": [str(i) for i in range(s, s + 5)], "vector": v[s:s + 5]} for s in (0, 5, 10, 15)])
    got = embed.sample_vectors(str(tmp_path / "c"), 8, seed=3)
    assert got.shape == (8, 2) and len({tuple(r) for r in got}) == 8
    assert all(any(np.array_equal(r, w) for w in v) for r in got)
    assert len(embed.sample_vectors(str(tmp_path / "c"), 100)) == 20


def test_shard_pieces_cover_every_id_once_in_order():
    counts, files = [3, 0, 7, 5], ["f0", "f1", "f2", "f3"]
    plan = shard_pieces(counts, files, shard_rows=6)
    assert len(plan) == 3  # ceil(15 / 6)
    starts = dict(zip(files, np.concatenate([[0], np.cumsum(counts)[:-1]])))
    ids = [starts[f] + r for first, pieces in plan for f, lo, hi in pieces for r in range(lo, hi)]
    assert ids == list(range(15))
    assert [first for first, _ in plan] == [0, 5, 10] and all(hi > lo for _, p in plan for _, lo, hi in p)
