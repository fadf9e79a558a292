"""Embedding a gallery and searching it with FAISS.

- faiss_indexes.py     flat / hnsw / ivfpq / auto indexes over unit vectors: build, measure, save, load (pure)
- embedding_passes.py  the gallery embedded to Parquet (Ray Data actor pools, or in the driver when small)
- sharded.py           indexes built in one process or as shards in Ray tasks; saved, loaded, searched
"""
