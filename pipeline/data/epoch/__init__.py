"""A training epoch's data: who reads which shard (or rows) in which order, the Ray Data source each worker
reads its share through, and the batches, cursors and caches on the way to the step.

- plan.py           shares of the shards per (seed, epoch, rank): deals, row layouts, resampled draws, cursors
- source.py         a worker's epoch as a Ray Data datasource (read tasks in position order)
- batcher.py        local batches from the stream, the cursor a checkpoint keeps, the source mix
- decoded_cache.py  data.cache_decoded: images decoded once per run, cropped every epoch
- device_decode.py  data.decode=gpu: JPEG bytes and boxes decoded on the worker's device
"""
