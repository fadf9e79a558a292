"""The few gallery images a report shows, read by key: in the driver for a small gallery
(`local_passes.thumbnails`), else a Ray Data pass that keeps only the wanted rows before decoding anything."""
from __future__ import annotations


def collect_thumbnails(paths: list[str], keys: list[str], side: int = 96, max_in_driver: int = 0
                       ) -> dict[str, str]:
    """key -> thumbnail data URI for the few gallery images a report shows: a Ray Data pass that keeps only
    those rows before decoding anything (a gallery of at most `max_in_driver` images is read in the driver)."""
    from pipeline.data import local_passes
    from pipeline.data.ingest import read_shards
    from pipeline.data.transforms import thumbnail

    wanted = set(keys)
    if not wanted:
        return {}
    if local_passes.fits_in_driver(paths, max_in_driver):
        return local_passes.thumbnails(paths, wanted, side)
    from ray.data.expressions import col

    out = {}
    # an Arrow predicate: a Python function here makes Ray warn on every report
    for row in read_shards(paths).filter(expr=col("key").is_in(sorted(wanted))).take_all():
        try:
            out[row["key"]] = thumbnail(row["image"], side)
        except (ValueError, OverflowError, TypeError):
            continue  # an image the gallery skipped: the report shows a placeholder
    return out
