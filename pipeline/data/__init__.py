"""Data: shard files in, training batches and evaluation rows out.

- formats/        the shard files: one reader, counts, inspect, writers and the bundled datasets
- text/           tokenizers and the vocabulary
- epoch/          a training epoch: the plan of who reads what, its Ray Data source, batches, caches
- ingest.py       Ray Data: shard lists resolved, the epoch and evaluation datasets built
- transforms.py   decode, crop, resize, caption choice and tokenising of a batch of rows (pure)
- skips.py        unusable samples: tallied and counted, never lost silently
- local_passes.py small evaluation passes in the driver, without Ray Data
- by_key.py       a report's images fetched by sample key (the report makes the thumbnails)
"""
